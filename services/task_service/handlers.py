"""Bus consumers of task_service: other services report, task_service moves the task."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from gradients.runtime import Consumer, Delivery, ServiceContext, events
from gradients.task_types import category_of
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.task_service.lifecycle import TaskLifecycle, Trigger
from services.task_service.logic import TaskState, allocate_hours, decide_after_offers
from services.task_service.publish import WinnerPublisher
from services.task_service.results import ResultStore
from services.task_service.settings import TaskServiceSettings

if TYPE_CHECKING:
    from services.task_service.service import TaskServiceContext


def _trigger(delivery: Delivery) -> Trigger:
    return Trigger(delivery.durable, delivery.msg_id)


class TaskEventHandlers:
    def __init__(self, ctx: ServiceContext[TaskServiceSettings, Any], lifecycle: TaskLifecycle):
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.settings = ctx.settings
        self.rng = random.Random(self.settings.synthetic_seed)
        self.results = ResultStore(ctx.store)
        self.publisher = WinnerPublisher(ctx, lifecycle, self.results)

    async def on_dataset_prepared(self, event: ev.DatasetPrepared, delivery: Delivery) -> None:
        if not event.ok:
            await self.lifecycle.transition(
                event.task_id,
                pb.FAILED,
                expect_from=(pb.PREPARING_DATA,),
                reason=f"data preparation: {event.failure_reason}",
                trigger=_trigger(delivery),
            )
            return

        def store_splits(task: pb.Task) -> None:
            task.splits.CopyFrom(event.splits)
            if task.hours <= 0:  # organic task without hours: eq 4 from the dataset size
                rows = event.splits.train.rows + event.splits.test.rows
                task.hours = allocate_hours(category_of(task.type), max(rows, 1), self.rng)
            if task.initial_hours <= 0:
                task.initial_hours = task.hours

        await self.lifecycle.transition(
            event.task_id,
            pb.LOOKING_FOR_MINERS,
            expect_from=(pb.PREPARING_DATA,),
            mutate=store_splits,
            trigger=_trigger(delivery),
        )

    async def on_miners_selected(self, event: ev.MinersSelected, delivery: Delivery) -> None:
        task = await self.lifecycle.tasks.get(event.task_id)
        if task is None or task.state != pb.LOOKING_FOR_MINERS or event.attempt != task.delay_attempts:
            return  # a stale round
        decision = decide_after_offers(
            len(event.accepted),
            task.delay_attempts,
            task.initial_hours or task.hours,
            self.settings.delay_policy(),
            task.organic,
        )
        trigger = _trigger(delivery)
        if decision.next_state is TaskState.TRAINING:
            deadline = (
                event.deadline.ToSeconds()
                if event.HasField("deadline")
                else (time.time() + task.hours * self.ctx.mesh.time_scale)
            )

            def start_training(t: pb.Task) -> None:
                del t.miner_hotkeys[:]
                t.miner_hotkeys.extend(event.accepted)
                t.deadline.FromSeconds(int(deadline))

            await self.lifecycle.transition(
                task.task_id,
                pb.TRAINING,
                expect_from=(pb.LOOKING_FOR_MINERS,),
                mutate=start_training,
                extra=lambda pipe, t: self.lifecycle.set_timer(pipe, "deadline", t.task_id, deadline),
                trigger=trigger,
            )
        elif decision.next_state is TaskState.DELAYED:
            retry_at = time.time() + (decision.retry_in_hours or 0) * self.ctx.mesh.time_scale

            def delay(t: pb.Task) -> None:
                t.hours = decision.hours
                t.delay_attempts = decision.attempts
                del t.miner_hotkeys[:]
                t.miner_hotkeys.extend(event.accepted)

            await self.lifecycle.transition(
                task.task_id,
                pb.DELAYED,
                expect_from=(pb.LOOKING_FOR_MINERS,),
                mutate=delay,
                reason=f"{len(event.accepted)} of {self.settings.min_acceptances} required miners accepted",
                extra=lambda pipe, t: self.lifecycle.set_timer(pipe, "retry", t.task_id, retry_at),
                trigger=trigger,
            )
        else:
            await self.lifecycle.transition(
                task.task_id,
                pb.FAILED,
                expect_from=(pb.LOOKING_FOR_MINERS,),
                reason=f"no miners: {len(event.accepted)} accepted after {task.delay_attempts} delays",
                trigger=trigger,
            )

    async def on_submission_received(self, event: ev.SubmissionReceived, delivery: Delivery) -> None:
        await self.lifecycle.record_submission(event.submission, _trigger(delivery))

    async def on_eval_completed(self, event: ev.EvalCompleted, delivery: Delivery) -> None:
        if not event.ok:
            await self.lifecycle.transition(
                event.task_id,
                pb.FAILED,
                expect_from=(pb.EVALUATING,),
                reason=f"evaluation: {event.failure_reason}",
                trigger=_trigger(delivery),
            )
            return
        # Kept for the customer's result (the base model's losses come only from here).
        trigger = _trigger(delivery)
        await self.ctx.store.apply_once(
            trigger.scope, trigger.event_id, lambda pipe: self.results.put_evaluation(pipe, event)
        )

    async def on_task_scored(self, event: ev.TaskScored, delivery: Delivery) -> None:
        await self.lifecycle.transition(
            event.task_id,
            pb.SCORED,
            expect_from=(pb.EVALUATING,),
            trigger=_trigger(delivery),
            extra=lambda pipe, task: self.results.put_scored(pipe, event),
        )


def consumers(ctx: TaskServiceContext) -> list[Consumer]:
    h = TaskEventHandlers(ctx, ctx.components.lifecycle)
    return [
        Consumer("task_service-dataset-prepared", events.DATASET_PREPARED, h.on_dataset_prepared),
        Consumer("task_service-miners-selected", events.MINERS_SELECTED, h.on_miners_selected),
        Consumer("task_service-submissions", events.SUBMISSION_RECEIVED, h.on_submission_received),
        Consumer("task_service-eval-completed", events.EVAL_COMPLETED, h.on_eval_completed),
        Consumer("task_service-task-scored", events.TASK_SCORED, h.on_task_scored),
        Consumer("task_service-publish-winner", events.TASK_STATE_CHANGED, h.publisher.handle),
    ]
