from gradients.runtime import run_service
from services.scorer.service import SPEC

run_service(SPEC)
