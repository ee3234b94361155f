"""gRPC EvalWorker: what this worker is doing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradients.v1 import eval_worker_pb2 as pb
from gradients.v1 import eval_worker_pb2_grpc

if TYPE_CHECKING:
    from services.eval_worker.service import EvalWorkerContext


class EvalWorkerServicer(eval_worker_pb2_grpc.EvalWorkerServicer):
    def __init__(self, ctx: EvalWorkerContext):
        self.ctx = ctx
        self.handler = ctx.components.handler

    async def GetWorkerStatus(self, request: pb.GetWorkerStatusRequest, context) -> pb.WorkerStatus:
        return pb.WorkerStatus(
            worker_id=self.handler.worker_id,
            device=self.ctx.settings.resolved_device(),  # the device jobs run on, not the setting ("auto")
            current_task_id=self.handler.status["current_task_id"],
            jobs_done=self.handler.status["jobs_done"],
        )
