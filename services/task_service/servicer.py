"""gRPC TaskService: the customer-facing task API."""

from __future__ import annotations

import asyncio
import uuid

from gradients.runtime import FailedPrecondition, InvalidArgument, NotFound, ServiceContext, events, telemetry
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.task_service.lifecycle import TaskLifecycle, now_ts

TERMINAL = (pb.SCORED, pb.FAILED, pb.CANCELLED)
BUILTIN_REWARDS = {"format", "length", "exact_match", "numeric_match", "keyword"}
# Standard columns each task type needs mapped (SPEC step 2).
REQUIRED_COLUMNS = {
    pb.INSTRUCT_TEXT: ("instruction", "output"),
    pb.CHAT: ("conversations",),
    pb.DPO: ("prompt", "chosen", "rejected"),
    pb.GRPO: ("prompt",),
}
MAX_PAGE = 500
MAX_REWARD_CODE_CHARS = 64 * 1024


def validate_create(request: ts.CreateTaskRequest) -> None:
    """INVALID_ARGUMENT naming the first bad field."""
    if request.type not in pb.TaskType.values() or request.type == pb.TASK_TYPE_UNSPECIFIED:
        names = [n for n in pb.TaskType.keys() if n != "TASK_TYPE_UNSPECIFIED"]
        raise InvalidArgument("type", f"must be one of {', '.join(names)}")
    if not request.base_model.strip():
        raise InvalidArgument("base_model", "is required")
    if request.base_model_params_b < 0:
        raise InvalidArgument("base_model_params_b", "must be >= 0")
    if request.hours < 0 or request.hours > 48:
        raise InvalidArgument("hours", "must be between 0 (allocate per eq 4) and 48")
    if request.type == pb.IMAGE:
        if not request.dataset.uri.strip() and not request.images:
            raise InvalidArgument("images", "an image task needs images (path + caption) or dataset.uri")
        for i, item in enumerate(request.images):
            if not item.path.strip():
                raise InvalidArgument(f"images[{i}].path", "is required")
            if not item.caption.strip():
                raise InvalidArgument(f"images[{i}].caption", "is required")
        return
    if not request.dataset.uri.strip():
        raise InvalidArgument("dataset.uri", "is required")
    mapping = request.dataset.column_mapping
    for column in REQUIRED_COLUMNS[request.type]:
        if mapping and column not in mapping:
            raise InvalidArgument(f"dataset.column_mapping[{column}]", f"is required for {pb.TaskType.Name(request.type)}")
        if mapping and not mapping[column].strip():
            raise InvalidArgument(f"dataset.column_mapping[{column}]", "must name a dataset column")
    if request.type == pb.GRPO:
        if not request.reward_functions:
            raise InvalidArgument("reward_functions", "a GRPO task needs at least one reward function")
        for i, fn in enumerate(request.reward_functions):
            if fn.weight <= 0:
                raise InvalidArgument(f"reward_functions[{i}].weight", "must be > 0")
            if fn.name == "code":
                if not fn.code.strip():
                    raise InvalidArgument(f"reward_functions[{i}].code", "is required when name is 'code'")
                if len(fn.code) > MAX_REWARD_CODE_CHARS:  # compiling megabytes blocks the service for seconds
                    raise InvalidArgument(f"reward_functions[{i}].code",
                                          f"is {len(fn.code)} characters; at most {MAX_REWARD_CODE_CHARS}")
                try:
                    compile(fn.code, f"reward_functions[{i}]", "exec")  # syntax only; never executed here
                except SyntaxError as exc:
                    raise InvalidArgument(f"reward_functions[{i}].code", f"syntax error: {exc.msg} (line {exc.lineno})") from None
                except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting too deep to compile
                    raise InvalidArgument(f"reward_functions[{i}].code", f"cannot be compiled: {type(exc).__name__}") from None
            elif fn.name not in BUILTIN_REWARDS:
                raise InvalidArgument(f"reward_functions[{i}].name",
                                      f"unknown reward function {fn.name!r}; built-ins: {', '.join(sorted(BUILTIN_REWARDS))}, or 'code'")


class TaskServicer(ts_grpc.TaskServiceServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.lifecycle: TaskLifecycle = ctx.state["lifecycle"]
        self.tasks = self.lifecycle.tasks

    async def CreateTask(self, request: ts.CreateTaskRequest, context) -> ts.CreateTaskResponse:
        validate_create(request)
        if request.request_id:
            existing = await self.ctx.store.redis.get(self.tasks.request_key(request.request_id))
            if existing and (task := await self.tasks.get(existing.decode())) is not None:
                return ts.CreateTaskResponse(task=task)
        dataset = pb.DatasetSpec()
        dataset.CopyFrom(request.dataset)
        if request.type == pb.IMAGE and request.images and not dataset.uri:
            dataset.format = "image_list"
            dataset.uri = "images:" + ";".join(f"{i.path}|{i.caption}" for i in request.images)
        task = pb.Task(
            task_id=str(uuid.uuid4()),
            type=request.type,
            organic=True,
            base_model=request.base_model,
            base_model_params_b=request.base_model_params_b,
            dataset=dataset,
            hours=request.hours,
            initial_hours=request.hours,
            created_at=now_ts(),
            account=request.account,
            trace_parent=telemetry.inject_headers({}).get("traceparent", ""),
        )
        task.evaluation.reward_functions.extend(request.reward_functions)
        task.evaluation.test_weight = 0.25 if request.type == pb.IMAGE else 0.7
        task.evaluation.dpo_beta = 0.1
        return ts.CreateTaskResponse(task=await self.lifecycle.create(task, request.request_id))

    async def GetTask(self, request: ts.GetTaskRequest, context) -> pb.Task:
        if not request.task_id:
            raise InvalidArgument("task_id", "is required")
        task = await self.tasks.get(request.task_id)
        if task is None:
            raise NotFound(f"task {request.task_id} not found")
        return task

    async def ListTasks(self, request: ts.ListTasksRequest, context) -> ts.ListTasksResponse:
        if request.page_size < 0:
            raise InvalidArgument("page_size", "must be >= 0")
        if request.state not in pb.TaskState.values():  # proto3 enums carry any int32
            raise InvalidArgument("state", f"{request.state} is not a TaskState")
        if request.type not in pb.TaskType.values():
            raise InvalidArgument("type", f"{request.type} is not a TaskType")
        size = min(request.page_size or 50, MAX_PAGE)
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgument("page_token", "is not a token returned by ListTasks") from None
        if request.state:
            ids = await self.lifecycle.ids_in(request.state)
            tasks = [t for t in [await self.tasks.get(i) for i in ids] if t]
        else:
            tasks = await self.tasks.all()
        if request.type:
            tasks = [t for t in tasks if t.type == request.type]
        tasks.sort(key=lambda t: (t.created_at.ToNanoseconds(), t.task_id))
        page = tasks[offset:offset + size]
        next_token = str(offset + size) if offset + size < len(tasks) else ""
        return ts.ListTasksResponse(tasks=page, next_page_token=next_token)

    async def CancelTask(self, request: ts.CancelTaskRequest, context) -> pb.Task:
        task = await self.GetTask(ts.GetTaskRequest(task_id=request.task_id), context)
        if task.state in TERMINAL:
            raise FailedPrecondition(f"task {task.task_id} is already {pb.TaskState.Name(task.state)}")
        moved = await self.lifecycle.transition(task.task_id, pb.CANCELLED, reason=request.reason or "cancelled")
        return moved or await self.GetTask(ts.GetTaskRequest(task_id=request.task_id), context)

    async def WatchTask(self, request: ts.WatchTaskRequest, context):
        """The current task, then every state change and progress report until it ends."""
        task = await self.GetTask(ts.GetTaskRequest(task_id=request.task_id), context)
        queue: asyncio.Queue = asyncio.Queue()

        async def on_message(msg) -> None:
            await queue.put(msg)

        subs = [await self.ctx.bus.nc.subscribe(subject, cb=on_message)
                for subject in (events.TASK_STATE_CHANGED, events.TASK_PROGRESS)]
        try:
            # Re-read after subscribing so a change in between is not missed.
            task = await self.tasks.get(request.task_id) or task
            yield ts.TaskUpdate(task=task, stage=pb.TaskState.Name(task.state), message="current state")
            version = task.version
            while task.state not in TERMINAL:
                msg = await queue.get()
                if msg.subject == events.TASK_STATE_CHANGED:
                    change = ev.TaskStateChanged.FromString(msg.data)
                    if change.task_id != task.task_id or change.version <= version:
                        continue
                    task, version = change.task, change.version
                    yield ts.TaskUpdate(task=task, stage=pb.TaskState.Name(change.to_state), message=change.reason)
                else:
                    progress = ev.TaskProgress.FromString(msg.data)
                    if progress.task_id != task.task_id:
                        continue
                    task.progress = f"{progress.stage}: {progress.done}/{progress.total} {progress.message}".strip()
                    yield ts.TaskUpdate(task=task, stage=progress.stage, message=task.progress)
        finally:
            for sub in subs:
                await sub.unsubscribe()
