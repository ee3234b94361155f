"""Wiring of scorer: its gRPC API, consumers and settings."""

from gradients.runtime import GrpcService, ServiceSpec
from gradients.v1 import scorer_pb2_grpc
from services.scorer import handlers
from services.scorer.servicer import ScorerServicer

SPEC = ServiceSpec(
    name="scorer",
    default_port=50055,
    grpc_services=(GrpcService("gradients.v1.Scorer", scorer_pb2_grpc.add_ScorerServicer_to_server, ScorerServicer),),
    consumers=handlers.consumers,
)
