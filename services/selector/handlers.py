"""Bus consumers of selector.

- state_changed(to=LOOKING_FOR_MINERS) → the offer round (rounds.py), publishes miners.selected;
- state_changed (any) → the gateway's copy of the task (TRAINING opens uploads; later states close them);
- task.scored → average quality score s_i, daily participation, the miners' results;
- eval.completed → the miners' results; scores.updated → each miner's S_final.
"""

from __future__ import annotations

from gradients.runtime import Consumer, Delivery, events
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.selector.components import SelectorContext
from services.selector.records import now_or
from services.selector.registry import utc_day


class SelectorHandlers:
    def __init__(self, ctx: SelectorContext):
        self.ctx = ctx
        self.sel = ctx.components

    async def on_offer_state(self, event: ev.TaskStateChanged, delivery: Delivery) -> None:
        if event.to_state != pb.LOOKING_FOR_MINERS:
            return
        await self.sel.rounds.handle(event.task)

    async def on_gateway_state(self, event: ev.TaskStateChanged, delivery: Delivery) -> None:
        # TRAINING opens a task to its miners; any later change of a task we serve is kept too,
        # so uploads stop once it leaves TRAINING.
        if event.to_state == pb.TRAINING or await self.sel.tasks.exists(event.task_id):
            task = pb.Task()
            task.CopyFrom(event.task)
            task.state = event.to_state
            task.version = max(task.version, event.version)
            await self.sel.tasks.put_if_newer(task)

    async def on_task_scored(self, event: ev.TaskScored, delivery: Delivery) -> None:
        at = now_or(event.scored_at)
        day = utc_day(at)

        def effect(pipe) -> None:
            for score in event.scores:
                self.sel.registry.add_task_score(pipe, score.miner_hotkey, score.task_score)
                self.sel.registry.mark_took_part(pipe, score.miner_hotkey, day)
                self.sel.results.record_score(pipe, event.task_id, score, at)

        await self.ctx.store.apply_once("selector-task-scored", delivery.msg_id, effect)
        for score in event.scores:
            await self.sel.results.trim(score.miner_hotkey)

    async def on_eval_completed(self, event: ev.EvalCompleted, delivery: Delivery) -> None:
        at = now_or(event.completed_at)

        def effect(pipe) -> None:
            for result in event.results:
                self.sel.results.record_eval(pipe, event.task_id, result, at)

        await self.ctx.store.apply_once("selector-eval-completed", delivery.msg_id, effect)
        for result in event.results:
            await self.sel.results.trim(result.miner_hotkey)

    async def on_scores_updated(self, event: ev.ScoresUpdated, delivery: Delivery) -> None:
        def effect(pipe) -> None:
            for s in event.scores:
                self.sel.registry.set_final_score(pipe, s.miner_hotkey, s.final_score)

        await self.ctx.store.apply_once("selector-scores-updated", delivery.msg_id, effect)


def consumers(ctx: SelectorContext) -> list[Consumer]:
    h = SelectorHandlers(ctx)
    return [
        # Rounds wait on miners for seconds each: several run at once.
        Consumer("selector-offers", events.TASK_STATE_CHANGED, h.on_offer_state, concurrency=4),
        Consumer("selector-gateway-tasks", events.TASK_STATE_CHANGED, h.on_gateway_state),
        Consumer("selector-task-scored", events.TASK_SCORED, h.on_task_scored),
        Consumer("selector-eval-completed", events.EVAL_COMPLETED, h.on_eval_completed),
        Consumer("selector-scores-updated", events.SCORES_UPDATED, h.on_scores_updated),
    ]
