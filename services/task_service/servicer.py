"""gRPC TaskService: the customer-facing task API.

Every call is authenticated by the customer's API key (`authorization: Bearer <key>`). This layer
decodes the call, asks `CustomerTasks` (customers.py: visibility, checks, lifecycle) and encodes
the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from gradients.accounts import Account
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.task_service.customers import CustomerTasks

if TYPE_CHECKING:
    from services.task_service.service import TaskServiceContext

DOWNLOAD_CHUNK = 1 << 20


class TaskServicer(ts_grpc.TaskServiceServicer):
    def __init__(self, ctx: TaskServiceContext):
        self.ctx = ctx
        self.settings = ctx.settings
        self.customers = CustomerTasks(ctx, ctx.components.lifecycle)

    async def _caller(self, context) -> Account:
        metadata = dict(context.invocation_metadata() or ())
        return await self.customers.caller(str(metadata.get("authorization", "")))

    async def UploadDataset(self, request_iterator, context) -> ts.UploadDatasetResponse:
        account = await self._caller(context)
        return await self.customers.uploads.receive(account, request_iterator, self.settings.max_dataset_bytes)

    async def CreateTask(self, request: ts.CreateTaskRequest, context) -> ts.CreateTaskResponse:
        account = await self._caller(context)
        return ts.CreateTaskResponse(task=await self.customers.create(account, request))

    async def GetTask(self, request: ts.GetTaskRequest, context) -> pb.Task:
        account = await self._caller(context)
        return await self.customers.visible_task(account, request.task_id)

    async def ListTasks(self, request: ts.ListTasksRequest, context) -> ts.ListTasksResponse:
        account = await self._caller(context)
        return await self.customers.page(account, request)

    async def CancelTask(self, request: ts.CancelTaskRequest, context) -> pb.Task:
        account = await self._caller(context)
        return await self.customers.cancel(account, request.task_id, request.reason)

    async def WatchTask(self, request: ts.WatchTaskRequest, context):
        """The current task, then every state change and progress report until it ends."""
        account = await self._caller(context)
        async with contextlib.aclosing(self.customers.updates(account, request.task_id)) as updates:
            async for update in updates:
                yield update

    async def GetTaskResult(self, request: ts.GetResultRequest, context) -> ts.CustomerTaskResult:
        account = await self._caller(context)
        return await self.customers.result(account, request.task_id)

    async def DownloadResult(self, request: ts.DownloadResultRequest, context):
        account = await self._caller(context)
        result, winner, path = await self.customers.winner_archive(account, request.task_id)
        try:
            first = True
            with path.open("rb") as handle:
                while True:
                    data = await asyncio.to_thread(handle.read, DOWNLOAD_CHUNK)
                    if not data and not first:
                        break
                    chunk = ts.ResultChunk(data=data)
                    if first:
                        chunk.filename = f"{request.task_id}-winner.tar"
                        chunk.kind = winner.kind or "adapter"
                        chunk.size_bytes = path.stat().st_size
                        chunk.sha256 = winner.sha256
                        chunk.base_model = result.base_model
                        first = False
                    yield chunk
                    if not data:
                        break
        finally:
            path.unlink(missing_ok=True)
