"""gRPC DatasetPrep: the splits prepared for a task."""

from __future__ import annotations

from gradients.runtime import InvalidArgument, NotFound, ServiceContext
from gradients.v1 import common_pb2 as pb
from gradients.v1 import dataset_prep_pb2 as dp
from gradients.v1 import dataset_prep_pb2_grpc
from services.dataset_prep.handlers import stored_result


class DatasetPrepServicer(dataset_prep_pb2_grpc.DatasetPrepServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    async def GetSplits(self, request: dp.GetSplitsRequest, context) -> pb.DatasetSplits:
        if not request.task_id:
            raise InvalidArgument("task_id", "is required")
        result = await stored_result(self.ctx.store, request.task_id)
        if result is None:
            raise NotFound(f"no splits for task {request.task_id}: its dataset has not been prepared")
        if not result.ok:
            raise NotFound(f"no splits for task {request.task_id}: data preparation failed: {result.failure_reason}")
        return result.splits
