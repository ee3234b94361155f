"""gRPC TaskService: the customer-facing task API."""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from gradients.runtime import InvalidArgument, NotFound, ServiceContext
from gradients.runtime import events
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.task_service.repository import TaskRepository


def validate_create(request: ts.CreateTaskRequest) -> None:
    if request.type == pb.TASK_TYPE_UNSPECIFIED or request.type not in pb.TaskType.values():
        raise InvalidArgument("type", f"must be one of {', '.join(n for n in pb.TaskType.keys() if n != 'TASK_TYPE_UNSPECIFIED')}")
    if not request.base_model.strip():
        raise InvalidArgument("base_model", "is required")
    if not request.dataset.uri.strip() and not request.images:
        raise InvalidArgument("dataset.uri", "is required")
    if request.hours < 0:
        raise InvalidArgument("hours", "must be >= 0")


class TaskServicer(ts_grpc.TaskServiceServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.tasks = TaskRepository(ctx.store)

    async def CreateTask(self, request: ts.CreateTaskRequest, context) -> ts.CreateTaskResponse:
        validate_create(request)
        redis = self.ctx.store.redis
        if request.request_id:
            existing = await redis.get(self.tasks.request_key(request.request_id))
            if existing:
                task = await self.tasks.get(existing.decode())
                if task is not None:
                    return ts.CreateTaskResponse(task=task)
        created = Timestamp()
        created.GetCurrentTime()
        task = pb.Task(
            task_id=str(uuid.uuid4()),
            type=request.type,
            state=pb.PENDING,
            organic=True,
            base_model=request.base_model,
            base_model_params_b=request.base_model_params_b,
            dataset=request.dataset,
            hours=request.hours,
            created_at=created,
            version=1,
            account=request.account,
        )
        task.evaluation.reward_functions.extend(request.reward_functions)
        async with redis.pipeline(transaction=True) as pipe:
            self.tasks.put(pipe, task.task_id, task)
            if request.request_id:
                pipe.set(self.tasks.request_key(request.request_id), task.task_id)
            await pipe.execute()
        # Stored first, then announced: a crash in between is healed by the request_id retry.
        await self.ctx.bus.publish(events.TASK_CREATED, ev.TaskCreated(task=task), msg_id=f"task-created:{task.task_id}")
        return ts.CreateTaskResponse(task=task)

    async def GetTask(self, request: ts.GetTaskRequest, context) -> pb.Task:
        if not request.task_id:
            raise InvalidArgument("task_id", "is required")
        task = await self.tasks.get(request.task_id)
        if task is None:
            raise NotFound(f"task {request.task_id} not found")
        return task
