"""Wiring of selector: its gRPC API, consumers and settings."""

from gradients.runtime import GrpcService, ServiceSpec
from gradients.v1 import selector_pb2_grpc
from services.selector import handlers
from services.selector.servicer import SelectorServicer

SPEC = ServiceSpec(
    name="selector",
    default_port=50052,
    grpc_services=(GrpcService("gradients.v1.Selector", selector_pb2_grpc.add_SelectorServicer_to_server, SelectorServicer),),
    consumers=handlers.consumers,
)
