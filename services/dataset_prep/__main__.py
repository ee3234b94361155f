from gradients.runtime import run_service
from services.dataset_prep.service import SPEC

run_service(SPEC)
