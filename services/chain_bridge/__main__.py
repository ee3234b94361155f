from gradients.runtime import run_service
from services.chain_bridge.service import SPEC

run_service(SPEC)
