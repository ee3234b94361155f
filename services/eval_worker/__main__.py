from gradients.runtime import run_service
from services.eval_worker.service import SPEC

run_service(SPEC)
