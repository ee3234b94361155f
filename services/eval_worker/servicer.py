"""gRPC EvalWorker servicer (methods not yet built answer UNIMPLEMENTED)."""

from __future__ import annotations

from gradients.runtime import ServiceContext
from gradients.v1 import eval_worker_pb2_grpc


class EvalWorkerServicer(eval_worker_pb2_grpc.EvalWorkerServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
