"""gRPC Selector servicer (methods not yet built answer UNIMPLEMENTED)."""

from __future__ import annotations

from gradients.runtime import ServiceContext
from gradients.v1 import selector_pb2_grpc


class SelectorServicer(selector_pb2_grpc.SelectorServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
