from gradients.runtime import run_service
from services.task_service.service import SPEC

run_service(SPEC)
