"""The task state machine, persisted: every transition is one Redis transaction that
stores the task, moves its state index, sets or clears its timers, marks the triggering
event processed and queues the `state_changed` event in the outbox.

So a task_service killed at any point resumes from Redis: a redelivered trigger finds its
marker and does nothing, an unpublished event is flushed at start-up, and a due timer
fires after the restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from gradients.accounts import Account, AccountStore, check_quota
from gradients.runtime import NotFound, ResourceExhausted, ServiceContext, events
from gradients.runtime.outbox import Outbox
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.task_service.logic import IllegalTransition, TaskState, check_transition
from services.task_service.repository import TaskRepository

log = logging.getLogger(__name__)

LIVE_STATES = tuple(
    s for s in pb.TaskState.values() if s not in (pb.TASK_STATE_UNSPECIFIED, pb.SCORED, pb.FAILED, pb.CANCELLED)
)


def logic_state(state: int) -> TaskState:
    return TaskState[pb.TaskState.Name(state)]


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


@dataclass(frozen=True)
class Trigger:
    """The event that caused a transition: applied at most once per (scope, id)."""

    scope: str
    event_id: str


Mutation = Callable[[pb.Task], None]
Extra = Callable[[Pipeline, pb.Task], None]


class TaskLifecycle:
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.tasks = TaskRepository(ctx.store)
        self.outbox = Outbox(ctx.store, ctx.bus, "task_service")
        self.accounts = AccountStore(ctx.store)

    # ---- creation --------------------------------------------------------------------

    async def task_for_request(self, account: str, request_id: str) -> pb.Task | None:
        """The task an earlier CreateTask with this idempotency key made, if any."""
        existing = await self.ctx.store.redis.get(self.tasks.request_key(account, request_id))
        return None if existing is None else await self.tasks.get(existing.decode())

    async def _quota_inputs(self, account: Account, pipe: Pipeline | None = None) -> tuple[int, list[float]]:
        redis = pipe if pipe is not None else self.ctx.store.redis
        ids = [m.decode() for m in await redis.smembers(self.accounts.tasks_key(account.name))]
        raws = await redis.mget([self.tasks.key(i) for i in ids]) if ids else []
        live = sum(1 for r in raws if r is not None and pb.Task.FromString(r).state in LIVE_STATES)
        created = [
            score for _, score in await redis.zrange(self.accounts.created_key(account.name), 0, -1, withscores=True)
        ]
        return live, created

    async def check_quota(self, account: Account | None, pipe: Pipeline | None = None) -> None:
        """RESOURCE_EXHAUSTED, saying when to retry, when the account may not create a task now."""
        if account is None or not (account.max_concurrent_tasks or account.tasks_per_hour):
            return
        live, created = await self._quota_inputs(account, pipe)
        decision = check_quota(account, live, created, time.time())
        if not decision.allowed:
            raise ResourceExhausted(decision.reason)

    async def create(self, task: pb.Task, request_id: str = "", quota_account: Account | None = None) -> pb.Task:
        """Store a new PENDING task and queue `task.created`.

        One transaction, watched: the idempotency key, the account's quota counts and the task
        are read and written together, so concurrent calls with one request_id make one task
        and concurrent calls cannot overrun a quota.
        """
        task.state = pb.PENDING
        task.version = 1
        redis = self.ctx.store.redis
        request_key = self.tasks.request_key(task.account, request_id) if request_id else None
        watched = [k for k in (request_key,) if k]
        if task.account:
            watched += [self.accounts.tasks_key(task.account), self.accounts.created_key(task.account)]
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                try:
                    if watched:
                        await pipe.watch(*watched)
                    if request_key and (existing := await pipe.get(request_key)) is not None:
                        await pipe.reset()
                        found = await self.tasks.get(existing.decode())
                        if found is not None:
                            return found
                        raise NotFound(f"the task of request {request_id} no longer exists")
                    await self.check_quota(quota_account, pipe)
                    pipe.multi()
                    self.tasks.put(pipe, task.task_id, task)
                    pipe.sadd(self.tasks.state_index(pb.PENDING), task.task_id)
                    if request_key:
                        pipe.set(request_key, task.task_id)
                    if task.account:
                        pipe.sadd(self.accounts.tasks_key(task.account), task.task_id)
                        pipe.zadd(self.accounts.created_key(task.account), {task.task_id: time.time()})
                    self.outbox.add(
                        pipe,
                        events.TASK_CREATED,
                        ev.TaskCreated(task=task),
                        f"task-created:{task.task_id}",
                        task.trace_parent,
                    )
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        await self.outbox.flush()
        return task

    # ---- transitions -----------------------------------------------------------------

    async def transition(
        self,
        task_id: str,
        to_state: int,
        *,
        expect_from: tuple[int, ...] | None = None,
        reason: str = "",
        mutate: Mutation | None = None,
        extra: Extra | None = None,
        trigger: Trigger | None = None,
    ) -> pb.Task | None:
        """Move a task to `to_state`; None when the trigger was already applied or the task
        is no longer in one of `expect_from` (a stale or repeated event)."""
        redis = self.ctx.store.redis
        key = self.tasks.key(task_id)
        marker = self.ctx.store.key("processed", trigger.scope, trigger.event_id) if trigger else None
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key, *([marker] if marker else []))
                    if marker and await pipe.exists(marker):
                        return None
                    raw = await pipe.get(key)
                    if raw is None:
                        raise NotFound(f"task {task_id} not found")
                    task = pb.Task.FromString(raw)
                    old = task.state
                    stale = expect_from is not None and old not in expect_from
                    if not stale:
                        try:
                            check_transition(logic_state(old), logic_state(to_state))
                        except IllegalTransition as exc:
                            log.warning("%s", exc, extra={"task_id": task_id})
                            stale = True
                    pipe.multi()
                    if stale:
                        if marker:
                            pipe.set(marker, b"1", ex=14 * 24 * 3600)
                            await pipe.execute()
                        return None
                    task.state = to_state
                    if to_state == pb.FAILED:
                        task.failure_reason = reason
                    if mutate:
                        mutate(task)
                    task.version += 1
                    self.tasks.put(pipe, task_id, task)
                    pipe.srem(self.tasks.state_index(old), task_id)
                    pipe.sadd(self.tasks.state_index(to_state), task_id)
                    if to_state in (pb.SCORED, pb.FAILED, pb.CANCELLED):
                        pipe.zrem(self.tasks.timers_key, f"deadline:{task_id}", f"retry:{task_id}")
                    if extra:
                        extra(pipe, task)
                    if marker:
                        pipe.set(marker, b"1", ex=14 * 24 * 3600)
                    change = ev.TaskStateChanged(
                        task_id=task_id,
                        from_state=old,
                        to_state=to_state,
                        reason=reason,
                        version=task.version,
                        at=now_ts(),
                        task=task,
                    )
                    self.outbox.add(
                        pipe, events.TASK_STATE_CHANGED, change, f"state:{task_id}:{task.version}", task.trace_parent
                    )
                    await pipe.execute()
                except WatchError:
                    continue
            log.info(
                "task %s: %s -> %s %s",
                task_id,
                pb.TaskState.Name(old),
                pb.TaskState.Name(to_state),
                reason,
                extra={"task_id": task_id},
            )
            await self.outbox.flush()
            return task

    # ---- timers ----------------------------------------------------------------------

    def set_timer(self, pipe: Pipeline, kind: str, task_id: str, at_unix: float) -> None:
        pipe.zadd(self.tasks.timers_key, {f"{kind}:{task_id}": at_unix})

    def clear_timer(self, pipe: Pipeline, kind: str, task_id: str) -> None:
        pipe.zrem(self.tasks.timers_key, f"{kind}:{task_id}")

    async def due_timers(self, now: float | None = None) -> list[tuple[str, str]]:
        now = time.time() if now is None else now
        raw = await self.ctx.store.redis.zrangebyscore(self.tasks.timers_key, "-inf", now)
        return [tuple(r.decode().split(":", 1)) for r in raw]  # type: ignore[misc]

    # ---- submissions -----------------------------------------------------------------

    async def record_submission(self, submission: pb.Submission, trigger: Trigger) -> bool:
        """Keep the latest upload per miner (by upload_seq)."""
        key = self.tasks.submissions_key(submission.task_id)
        current = await self.ctx.store.redis.hget(key, submission.miner_hotkey)
        if current is not None and pb.Submission.FromString(current).upload_seq >= submission.upload_seq:
            return False

        def effect(pipe: Pipeline) -> None:
            pipe.hset(key, submission.miner_hotkey, submission.SerializeToString())

        return await self.ctx.store.apply_once(trigger.scope, trigger.event_id, effect, watch=(key,))

    async def submissions(self, task_id: str) -> list[pb.Submission]:
        raw = await self.ctx.store.redis.hgetall(self.tasks.submissions_key(task_id))
        subs = [pb.Submission.FromString(v) for v in raw.values()]
        return sorted(subs, key=lambda s: (s.upload_seq, s.miner_hotkey))

    async def ids_in(self, *states: int) -> list[str]:
        redis = self.ctx.store.redis
        ids: set[str] = set()
        for state in states:
            ids |= {m.decode() for m in await redis.smembers(self.tasks.state_index(state))}
        return sorted(ids)
