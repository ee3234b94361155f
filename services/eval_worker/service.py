"""Wiring of eval_worker: its gRPC API, consumers and settings."""

from gradients.runtime import GrpcService, ServiceSpec
from gradients.v1 import eval_worker_pb2_grpc
from services.eval_worker import handlers
from services.eval_worker.servicer import EvalWorkerServicer

SPEC = ServiceSpec(
    name="eval_worker",
    default_port=50054,
    grpc_services=(GrpcService("gradients.v1.EvalWorker", eval_worker_pb2_grpc.add_EvalWorkerServicer_to_server, EvalWorkerServicer),),
    consumers=handlers.consumers,
)
