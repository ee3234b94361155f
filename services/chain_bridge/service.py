"""Wiring of chain_bridge: its gRPC API, consumers and settings."""

from gradients.runtime import GrpcService, ServiceSpec
from gradients.v1 import chain_bridge_pb2_grpc
from services.chain_bridge import handlers
from services.chain_bridge.servicer import ChainBridgeServicer

SPEC = ServiceSpec(
    name="chain_bridge",
    default_port=50056,
    grpc_services=(GrpcService("gradients.v1.ChainBridge", chain_bridge_pb2_grpc.add_ChainBridgeServicer_to_server, ChainBridgeServicer),),
    consumers=handlers.consumers,
)
