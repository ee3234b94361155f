"""What TaskService does for its customers, behind the gRPC layer: who is calling, which tasks
they may see, CreateTask's checks and the task it builds, pages of ListTasks, a task's updates
for WatchTask, and results.

A task is visible only to the account that created it: another account's task is NOT_FOUND, as
if it did not exist. With GRADIENTS_TASK_AUTH=open (local development) no key is needed and
every task is visible.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from gradients.accounts import Account, AccountStore, bearer_key
from gradients.evaluation import default_criteria
from gradients.runtime import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceContext,
    Unauthenticated,
    Unavailable,
    events,
    telemetry,
)
from gradients.v1 import common_pb2 as pb
from gradients.v1 import dataset_prep_pb2 as dp
from gradients.v1 import dataset_prep_pb2_grpc as dp_grpc
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from services.task_service.datasets import DatasetUploads
from services.task_service.lifecycle import TaskLifecycle, now_ts
from services.task_service.models import ModelRefused, inspect_base_model
from services.task_service.results import ResultStore, build_result
from services.task_service.settings import TaskServiceSettings

log = logging.getLogger(__name__)
OPEN_ACCOUNT = Account("open")  # the caller of an open (development) mesh

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


def _is_repo_id(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}", value))


def validate_create(request: ts.CreateTaskRequest) -> None:
    """INVALID_ARGUMENT naming the first bad field."""
    if request.type not in pb.TaskType.values() or request.type == pb.TASK_TYPE_UNSPECIFIED:
        names = [n for n in pb.TaskType.keys() if n != "TASK_TYPE_UNSPECIFIED"]
        raise InvalidArgument("type", f"must be one of {', '.join(names)}")
    if not request.base_model.strip():
        raise InvalidArgument("base_model", "is required")
    if request.base_model_params_b < 0:
        raise InvalidArgument("base_model_params_b", "must be >= 0")
    if request.result_model_name and not _is_repo_id(request.result_model_name):
        raise InvalidArgument("result_model_name", "must be a Hugging Face repository id such as org/name")
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
            raise InvalidArgument(
                f"dataset.column_mapping[{column}]", f"is required for {pb.TaskType.Name(request.type)}"
            )
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
                    raise InvalidArgument(
                        f"reward_functions[{i}].code", f"is {len(fn.code)} characters; at most {MAX_REWARD_CODE_CHARS}"
                    )
                try:
                    compile(fn.code, f"reward_functions[{i}]", "exec")  # syntax only; never executed here
                except SyntaxError as exc:
                    raise InvalidArgument(
                        f"reward_functions[{i}].code", f"syntax error: {exc.msg} (line {exc.lineno})"
                    ) from None
                except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting too deep to compile
                    raise InvalidArgument(
                        f"reward_functions[{i}].code", f"cannot be compiled: {type(exc).__name__}"
                    ) from None
            elif fn.name not in BUILTIN_REWARDS:
                raise InvalidArgument(
                    f"reward_functions[{i}].name",
                    f"unknown reward function {fn.name!r}; built-ins: {', '.join(sorted(BUILTIN_REWARDS))}, or 'code'",
                )


class CustomerTasks:
    """The customer-facing operations over the task lifecycle (TaskServicer decodes and encodes)."""

    def __init__(self, ctx: ServiceContext[TaskServiceSettings, Any], lifecycle: TaskLifecycle):
        self.ctx = ctx
        self.settings = ctx.settings
        self.lifecycle = lifecycle
        self.tasks = lifecycle.tasks
        self.accounts = AccountStore(ctx.store)
        self.results = ResultStore(ctx.store)
        self.uploads = DatasetUploads(ctx, self.accounts)
        self.open = self.settings.auth == "open"

    # ---- who is calling ----------------------------------------------------------------

    async def caller(self, authorization: str) -> Account:
        """The account of the call's API key (its `authorization` metadata); UNAUTHENTICATED
        without a valid one."""
        key = bearer_key(authorization)
        if key:
            account = await self.accounts.authenticate(key)
            if account is not None:
                return account
            if not self.open:
                raise Unauthenticated("the API key is not valid (unknown or revoked)")
        if self.open:
            return OPEN_ACCOUNT
        raise Unauthenticated(
            "an API key is required: send metadata 'authorization: Bearer <key>' "
            "(operators create keys with `gradients accounts create`)"
        )

    async def visible_task(self, account: Account, task_id: str) -> pb.Task:
        """The task when this account may see it; NOT_FOUND otherwise (existence is not revealed)."""
        if not task_id:
            raise InvalidArgument("task_id", "is required")
        task = await self.tasks.get(task_id)
        if task is None or not self._may_see(account, task):
            raise NotFound(f"task {task_id} not found")
        return task

    def _may_see(self, account: Account, task: pb.Task) -> bool:
        return (self.open and account is OPEN_ACCOUNT) or (task.organic and task.account == account.name)

    # ---- datasets ----------------------------------------------------------------------

    async def _inspect_dataset(self, account: Account, request: ts.CreateTaskRequest, dataset: pb.DatasetSpec) -> None:
        """dataset_prep reads the dataset now, so a bad one is refused here and not hours later."""
        if dataset.uri.startswith("upload:") and not await self.uploads.owned(account, dataset.uri):
            raise InvalidArgument("dataset.uri", "no dataset was uploaded under this digest by this account")
        if not self.settings.check_at_create:
            return
        stub = dp_grpc.DatasetPrepStub(self.ctx.channel(self.ctx.mesh.dataset_prep_addr))
        try:
            await stub.InspectDataset(
                dp.InspectDatasetRequest(type=request.type, dataset=dataset), timeout=self.settings.inspect_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(*_split_field(exc.details() or "dataset: refused")) from None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("the dataset check (dataset_prep) is not reachable right now; retry") from None
            log.warning("InspectDataset answered %s", exc.code().name)
            raise Unavailable(f"the dataset check failed ({exc.code().name}); retry") from None

    # ---- tasks -------------------------------------------------------------------------

    async def create(self, account: Account, request: ts.CreateTaskRequest) -> pb.Task:
        validate_create(request)
        owner = "" if account is OPEN_ACCOUNT else account.name
        if request.request_id:
            existing = await self.lifecycle.task_for_request(owner, request.request_id)
            if existing is not None:
                return existing
        # Quotas first: a customer over them gets the answer before any expensive check.
        await self.lifecycle.check_quota(account if owner else None)
        dataset = pb.DatasetSpec()
        dataset.CopyFrom(request.dataset)
        dataset.row_count = 0  # filled in by dataset_prep
        if request.type == pb.IMAGE and request.images and not dataset.uri:
            dataset.format = "image_list"
            dataset.uri = "images:" + ";".join(f"{i.path}|{i.caption}" for i in request.images)
        model = None
        if self.settings.check_at_create:
            try:
                model = await asyncio.to_thread(inspect_base_model, request.base_model, self.ctx.mesh.data_dir)
            except ModelRefused as exc:
                raise InvalidArgument("base_model", exc.reason) from None
        if model is not None:
            wants = "diffusion" if request.type == pb.IMAGE else "text"
            if model.kind != wants:
                raise InvalidArgument(
                    "base_model",
                    f"is a {model.kind} model; a {pb.TaskType.Name(request.type)} task needs a {wants} model",
                )
        await self._inspect_dataset(account, request, dataset)
        params_b = request.base_model_params_b or (model.params_b if model and model.params_b else 0.0)
        task = pb.Task(
            task_id=str(uuid.uuid4()),
            type=request.type,
            organic=True,
            base_model=request.base_model,
            base_model_params_b=params_b,
            dataset=dataset,
            hours=request.hours,
            initial_hours=request.hours,
            created_at=now_ts(),
            account=owner,
            result_model_name=request.result_model_name,
            trace_parent=telemetry.inject_headers({}).get("traceparent", ""),
        )
        task.evaluation.reward_functions.extend(request.reward_functions)
        criteria = default_criteria(request.type)
        task.evaluation.test_weight = criteria.test_weight
        task.evaluation.dpo_beta = criteria.dpo_beta
        return await self.lifecycle.create(task, request.request_id, quota_account=account if owner else None)

    async def page(self, account: Account, request: ts.ListTasksRequest) -> ts.ListTasksResponse:
        """One page of the tasks this account may see, oldest first; the token is an offset."""
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
        if account is OPEN_ACCOUNT:
            ids = await self.lifecycle.ids_in(request.state) if request.state else await self.tasks.ids()
        else:
            ids = await self.accounts.task_ids(account.name)
        tasks = await self.tasks.many(ids)
        tasks = [
            t
            for t in tasks
            if (not request.state or t.state == request.state)
            and (not request.type or t.type == request.type)
            and self._may_see(account, t)
        ]
        tasks.sort(key=lambda t: (t.created_at.ToNanoseconds(), t.task_id))
        page = tasks[offset : offset + size]
        next_token = str(offset + size) if offset + size < len(tasks) else ""
        return ts.ListTasksResponse(tasks=page, next_page_token=next_token)

    async def cancel(self, account: Account, task_id: str, reason: str) -> pb.Task:
        task = await self.visible_task(account, task_id)
        if task.state in TERMINAL:
            raise FailedPrecondition(f"task {task.task_id} is already {pb.TaskState.Name(task.state)}")
        moved = await self.lifecycle.transition(task.task_id, pb.CANCELLED, reason=reason or "cancelled")
        return moved or await self.visible_task(account, task_id)

    async def updates(self, account: Account, task_id: str) -> AsyncIterator[ts.TaskUpdate]:
        """The current task, then every state change and progress report until it ends."""
        task = await self.visible_task(account, task_id)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            await queue.put(msg)

        subs = [
            await self.ctx.bus.nc.subscribe(subject, cb=on_message)
            for subject in (events.TASK_STATE_CHANGED, events.TASK_PROGRESS)
        ]
        try:
            # Re-read after subscribing so a change in between is not missed.
            task = await self.tasks.get(task_id) or task
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

    # ---- results -----------------------------------------------------------------------

    async def result(self, account: Account, task_id: str) -> ts.CustomerTaskResult:
        task = await self.visible_task(account, task_id)
        if task.state != pb.SCORED:
            # Losses say something about the hidden test split: nothing before the task ends.
            why = f": {task.failure_reason}" if task.state == pb.FAILED and task.failure_reason else ""
            raise FailedPrecondition(
                f"task {task.task_id} is {pb.TaskState.Name(task.state)}{why}; a result exists once it is SCORED"
            )
        record = await self.results.get(task.task_id)
        submissions = await self.lifecycle.submissions(task.task_id)
        return build_result(task, record, submissions)

    async def winner_archive(self, account: Account, task_id: str) -> tuple[ts.CustomerTaskResult, pb.Submission, Path]:
        """The result, its winning submission and a verified local copy of its archive (the
        caller deletes the file)."""
        result = await self.result(account, task_id)
        if not result.winner_hotkey:
            raise FailedPrecondition(f"task {task_id} has no winning submission to download")
        submissions = {s.miner_hotkey: s for s in await self.lifecycle.submissions(task_id)}
        winner = submissions[result.winner_hotkey]
        path = await self.uploads.fetch_verified(winner.artifact, winner.sha256)
        return result, winner, path


def _split_field(details: str) -> tuple[str, str]:
    """InvalidArgument's "field: problem" back into its parts."""
    field, sep, problem = details.partition(": ")
    return (field, problem) if sep and " " not in field else ("dataset", details)
