"""gRPC DatasetPrep: the splits prepared for a task, and the check of a customer's dataset."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from gradients.runtime import InvalidArgument, NotFound, ServiceContext
from gradients.v1 import common_pb2 as pb
from gradients.v1 import dataset_prep_pb2 as dp
from gradients.v1 import dataset_prep_pb2_grpc
from services.dataset_prep.handlers import stored_result
from services.dataset_prep.settings import DatasetPrepSettings
from services.dataset_prep.sources import inspect_dataset


class DatasetPrepServicer(dataset_prep_pb2_grpc.DatasetPrepServicer):
    def __init__(self, ctx: ServiceContext[DatasetPrepSettings, Any]):
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

    async def InspectDataset(self, request: dp.InspectDatasetRequest, context) -> dp.InspectDatasetResponse:
        """The customer's dataset under the organic source policy: readable, mapped, enough rows."""
        work_dir = Path(self.ctx.mesh.data_dir) / "dataset_prep" / f"inspect-{uuid.uuid4().hex}"
        return await inspect_dataset(self.ctx, request.type, request.dataset, work_dir)
