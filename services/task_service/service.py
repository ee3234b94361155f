"""Wiring of task_service: its gRPC API, consumers and settings."""

from gradients.runtime import GrpcService, ServiceSpec
from gradients.v1 import task_service_pb2_grpc
from services.task_service import handlers
from services.task_service.servicer import TaskServicer

SPEC = ServiceSpec(
    name="task_service",
    default_port=50051,
    grpc_services=(
        GrpcService("gradients.v1.TaskService", task_service_pb2_grpc.add_TaskServiceServicer_to_server, TaskServicer),
    ),
    consumers=handlers.consumers,
)
