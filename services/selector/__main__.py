from gradients.runtime import run_service
from services.selector.service import SPEC

run_service(SPEC)
