"""gRPC ChainBridge servicer (methods not yet built answer UNIMPLEMENTED)."""

from __future__ import annotations

from gradients.runtime import ServiceContext
from gradients.v1 import chain_bridge_pb2_grpc


class ChainBridgeServicer(chain_bridge_pb2_grpc.ChainBridgeServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
