"""Bus consumers of scorer: `gradients.eval.completed` → scores."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gradients.runtime import Consumer, Delivery, events
from gradients.v1 import events_pb2 as ev
from services.scorer.keeper import ScoreKeeper

if TYPE_CHECKING:
    from services.scorer.service import ScorerContext

log = logging.getLogger(__name__)
DURABLE = "scorer-eval-completed"


class EvalCompletedHandler:
    def __init__(self, keeper: ScoreKeeper):
        self.keeper = keeper

    async def handle(self, event: ev.EvalCompleted, delivery: Delivery) -> None:
        if not event.ok:
            # The job as a whole failed: task_service fails the task; there is nothing to rank.
            log.info(
                "task %s: evaluation failed (%s), not scored",
                event.task_id,
                event.failure_reason,
                extra={"task_id": event.task_id},
            )
            return
        if not event.task_id:
            raise ValueError("EvalCompleted.task_id is empty")
        done = await self.keeper.score(event)
        if done is None:
            log.info("task %s already scored; redelivery ignored", event.task_id, extra={"task_id": event.task_id})


def consumers(ctx: ScorerContext) -> list[Consumer]:
    return [Consumer(DURABLE, events.EVAL_COMPLETED, EvalCompletedHandler(ctx.components.keeper).handle)]
