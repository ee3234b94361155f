"""task_service's background loops: the scheduler (organic first, synthetic fill) and the
timers (training deadlines, delayed retries, the start of evaluation)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid

from gradients.evaluation import default_criteria
from gradients.runtime import ServiceContext, events, metrics, telemetry
from gradients.task_types import proto_of
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.task_service.lifecycle import LIVE_STATES, TaskLifecycle, now_ts
from services.task_service.logic import SyntheticTaskSpec, next_tasks_to_start
from services.task_service.settings import parse_mix

log = logging.getLogger(__name__)


def current_traceparent() -> str:
    headers = telemetry.inject_headers({})
    return headers.get("traceparent", "")


class TaskScheduler:
    def __init__(self, ctx: ServiceContext, lifecycle: TaskLifecycle):
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.settings = ctx.settings
        self.rng = random.Random(self.settings.synthetic_seed)
        self.mix = parse_mix(self.settings.synthetic_mix)
        self.pools = self.settings.pools()
        self.extras = self.settings.pool_extras()
        self.created_key = ctx.store.key("synthetic-created")
        self._tracer = telemetry.tracer("gradients.task_service")

    async def run(self) -> None:
        flushed = False
        while True:
            try:  # everything inside: one failed tick (Redis briefly away) must not end the loop for good
                if not flushed:
                    await self.lifecycle.outbox.flush()  # events a crashed predecessor stored but did not publish
                    flushed = True
                await self.fire_due_timers()
                await self.start_tasks()
                await self.report_states()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.settings.tick_s)

    # ---- organic first, synthetic fills the gaps --------------------------------------

    async def report_states(self) -> None:
        counts = {pb.TaskState.Name(s): len(await self.lifecycle.ids_in(s)) for s in pb.TaskState.values() if s}
        metrics.tasks_by_state.set(counts)

    async def start_tasks(self) -> None:
        pending = [t for t in [await self.lifecycle.tasks.get(i) for i in await self.lifecycle.ids_in(pb.PENDING)] if t]
        running_ids = await self.lifecycle.ids_in(*(s for s in LIVE_STATES if s != pb.PENDING))
        running = [t for t in [await self.lifecycle.tasks.get(i) for i in running_ids] if t]
        organic_queue = sorted((t for t in pending if t.organic), key=_by_age)
        # A synthetic task is created, then started: one left PENDING by a crash between the two
        # steps takes the place of the next new one, so none waits forever.
        leftover = sorted((t for t in pending if not t.organic), key=_by_age)
        synthetic_running = sum(1 for t in running if not t.organic)
        free = max(0, self.settings.max_active - len(running))
        if free == 0:
            return
        synthetic_cap = self.settings.max_synthetic if (self.settings.synthetic_enabled and self.pools) else 0
        if synthetic_cap and self.settings.synthetic_limit:
            created = int(await self.ctx.store.redis.get(self.created_key) or 0)  # leftovers were counted
            synthetic_cap = min(
                synthetic_cap, synthetic_running + len(leftover) + max(0, self.settings.synthetic_limit - created)
            )
        plan = next_tasks_to_start(
            organic_queue, synthetic_running, synthetic_cap, free, self.rng, self.pools or _NO_POOLS, self.mix
        )
        for task in plan.organic:
            await self.lifecycle.transition(task.task_id, pb.PREPARING_DATA, expect_from=(pb.PENDING,))
        for i, spec in enumerate(plan.synthetic):
            task = leftover[i] if i < len(leftover) else await self.create_synthetic(spec)
            await self.lifecycle.transition(task.task_id, pb.PREPARING_DATA, expect_from=(pb.PENDING,))

    async def create_synthetic(self, spec: SyntheticTaskSpec) -> pb.Task:
        with self._tracer.start_as_current_span(
            "synthetic task", attributes={"task.type": spec.task_type.name}
        ) as span:
            task = pb.Task(
                task_id=str(uuid.uuid4()),
                type=proto_of(spec.task_type),
                organic=False,
                base_model=spec.base_model,
                dataset=pb.DatasetSpec(uri=spec.dataset.dataset_id, row_count=spec.dataset.n_rows),
                hours=spec.hours,
                initial_hours=spec.hours,
                base_model_params_b=float(self.extras.get("params_b", {}).get(spec.base_model, 0.0)),
                created_at=now_ts(),
                trace_parent=current_traceparent(),
            )
            for fn in self.extras.get("reward_functions", {}).get(spec.task_type.name, []):
                task.evaluation.reward_functions.append(
                    pb.RewardFunction(
                        name=fn["name"],
                        weight=float(fn.get("weight", 1.0)),
                        code=fn.get("code", ""),
                        params={k: str(v) for k, v in fn.get("params", {}).items()},
                    )
                )
            criteria = default_criteria(task.type)
            task.evaluation.test_weight = criteria.test_weight
            task.evaluation.dpo_beta = criteria.dpo_beta
            span.set_attribute("task.id", task.task_id)
            await self.ctx.store.redis.incr(self.created_key)
            return await self.lifecycle.create(task)

    # ---- timers ----------------------------------------------------------------------

    async def fire_due_timers(self) -> None:
        for kind, task_id in await self.lifecycle.due_timers():
            fired = await self.fire(kind, task_id)
            if fired is None:  # the task moved on meanwhile: the timer is stale
                async with self.ctx.store.redis.pipeline(transaction=True) as pipe:
                    self.lifecycle.clear_timer(pipe, kind, task_id)
                    await pipe.execute()

    async def fire(self, kind: str, task_id: str) -> pb.Task | None:
        lc = self.lifecycle
        if kind == "retry":
            return await lc.transition(
                task_id,
                pb.LOOKING_FOR_MINERS,
                expect_from=(pb.DELAYED,),
                extra=lambda pipe, t: lc.clear_timer(pipe, "retry", task_id),
            )
        if kind == "deadline":
            evaluate_at = time.time() + self.settings.submission_grace_s

            def next_timer(pipe, t):
                lc.clear_timer(pipe, "deadline", task_id)
                lc.set_timer(pipe, "evaluate", task_id, evaluate_at)

            return await lc.transition(task_id, pb.PREEVALUATION, expect_from=(pb.TRAINING,), extra=next_timer)
        if kind == "evaluate":
            submissions = await lc.submissions(task_id)
            if not submissions:
                return await lc.transition(
                    task_id,
                    pb.FAILED,
                    expect_from=(pb.PREEVALUATION,),
                    reason="evaluation: no submissions before the deadline",
                    extra=lambda pipe, t: lc.clear_timer(pipe, "evaluate", task_id),
                )

            def enqueue(pipe, t: pb.Task) -> None:
                lc.clear_timer(pipe, "evaluate", task_id)
                job = ev.EvalJobRequested(task=t, submissions=submissions)
                lc.outbox.add(pipe, events.EVAL_JOB_REQUESTED, job, f"eval-job:{task_id}:{t.version}", t.trace_parent)

            return await lc.transition(task_id, pb.EVALUATING, expect_from=(pb.PREEVALUATION,), extra=enqueue)
        log.warning("unknown timer %s:%s", kind, task_id)
        return None


def _by_age(task: pb.Task) -> tuple[int, str]:
    return task.created_at.ToNanoseconds(), task.task_id


class _NoPools:
    """Stands in when synthetic tasks are off (the cap is then 0, so it is never read)."""

    def check_covers(self, mix) -> None:
        raise ValueError("synthetic tasks need GRADIENTS_TASK_SYNTHETIC_POOLS")


_NO_POOLS = _NoPools()
