"""gRPC Scorer servicer (methods not yet built answer UNIMPLEMENTED)."""

from __future__ import annotations

from gradients.runtime import ServiceContext
from gradients.v1 import scorer_pb2_grpc


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
