"""What a customer sees of an ended task: the winner against the base model and the others.

task_service keeps, per task, the evaluation (`eval.completed`, with the base model's own
losses) and the scores (`task.scored`) it consumed, and `build_result` turns them into the
customer's `CustomerTaskResult`. Per-example losses are never sent: they describe the hidden
test split row by row.

Redis: `<ns>:task-result:<task_id>` hash with fields `eval` (EvalCompleted), `scored`
(TaskScored) and `publish` (PublishOutcome JSON: the Hub push of the winner).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from redis.asyncio.client import Pipeline

from gradients.runtime import Store
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts


@dataclass
class ResultRecord:
    evaluation: ev.EvalCompleted | None = None
    scored: ev.TaskScored | None = None
    pushed_repository: str = ""
    push_error: str = ""


class ResultStore:
    def __init__(self, store: Store):
        self.store = store

    def key(self, task_id: str) -> str:
        return self.store.key("task-result", task_id)

    def put_evaluation(self, pipe: Pipeline, completed: ev.EvalCompleted) -> None:
        pipe.hset(self.key(completed.task_id), "eval", completed.SerializeToString())

    def put_scored(self, pipe: Pipeline, scored: ev.TaskScored) -> None:
        pipe.hset(self.key(scored.task_id), "scored", scored.SerializeToString())

    async def put_publish(self, task_id: str, repository: str, error: str) -> None:
        await self.store.redis.hset(
            self.key(task_id), "publish", json.dumps({"repository": repository, "error": error})
        )

    async def get(self, task_id: str) -> ResultRecord:
        raw = await self.store.redis.hgetall(self.key(task_id))
        record = ResultRecord()
        if b"eval" in raw:
            record.evaluation = ev.EvalCompleted.FromString(raw[b"eval"])
        if b"scored" in raw:
            record.scored = ev.TaskScored.FromString(raw[b"scored"])
        if b"publish" in raw:
            publish = json.loads(raw[b"publish"])
            record.pushed_repository, record.push_error = publish.get("repository", ""), publish.get("error", "")
        return record


def relative_improvement(base: float, winner: float) -> float:
    """(base - winner) / |base|: the share of the base model's loss the fine-tune removed.

    Losses are lower-is-better for every type (GRPO: minus the reward), so a positive value is
    an improvement; 0 when the base loss is 0 or either value is not finite.
    """
    if not (math.isfinite(base) and math.isfinite(winner)) or base == 0:
        return 0.0
    return (base - winner) / abs(base)


def split_losses(result: pb.EvaluationResult) -> ts.SplitLosses:
    return ts.SplitLosses(test=result.loss_test, synth=result.loss_synth, weighted=result.loss_weighted)


def winner_of(scores: list[pb.Score]) -> str:
    """The hotkey ranked first (duplicates never win); "" when nobody was ranked."""
    ranked = sorted((s for s in scores if s.rank > 0 and not s.duplicate), key=lambda s: (s.rank, s.miner_hotkey))
    return ranked[0].miner_hotkey if ranked else ""


def build_result(task: pb.Task, record: ResultRecord, submissions: list[pb.Submission]) -> ts.CustomerTaskResult:
    out = ts.CustomerTaskResult(
        task_id=task.task_id,
        state=task.state,
        base_model=task.base_model,
        result_model_name=task.result_model_name,
        pushed_repository=record.pushed_repository,
        push_error=record.push_error,
    )
    results = {r.miner_hotkey: r for r in (record.evaluation.results if record.evaluation else [])}
    scores = {s.miner_hotkey: s for s in (record.scored.scores if record.scored else [])}
    if record.evaluation is not None and record.evaluation.HasField("baseline") and record.evaluation.baseline.ok:
        out.base.CopyFrom(split_losses(record.evaluation.baseline))
        out.has_base = True
    if (
        record.scored is not None
        and record.scored.HasField("rank1_confidence")
        and math.isfinite(record.scored.rank1_confidence)
    ):
        out.rank1_confidence = record.scored.rank1_confidence
    for hotkey in sorted(set(results) | set(scores)):
        result, score = results.get(hotkey), scores.get(hotkey)
        row = ts.MinerOutcome(miner_hotkey=hotkey)
        if result is not None:
            row.ok, row.failure_reason = result.ok, result.failure_reason
            if result.ok:
                row.losses.CopyFrom(split_losses(result))
        if score is not None:
            row.rank, row.task_score = score.rank, score.task_score
            row.duplicate, row.suspicious = score.duplicate, score.suspicious
            if score.reason and not row.failure_reason:
                row.failure_reason = score.reason
        out.miners.append(row)
    out.miners.sort(key=lambda m: (m.rank <= 0, m.rank, m.miner_hotkey))
    winner = winner_of(list(scores.values()))
    if winner and winner in results and results[winner].ok:
        out.winner_hotkey = winner
        out.winner.CopyFrom(split_losses(results[winner]))
        if out.has_base:
            out.improvement = relative_improvement(out.base.weighted, out.winner.weighted)
        by_hotkey = {s.miner_hotkey: s for s in submissions}
        if winner in by_hotkey:
            sub = by_hotkey[winner]
            out.winner_kind, out.winner_sha256, out.winner_size_bytes = (
                sub.kind or "adapter",
                sub.sha256,
                sub.size_bytes,
            )
    return out
