"""From bus messages to the pure scoring types, and back (no I/O).

The live scorer and the auditor's replay both go through these functions, so a replay turns
the same stored bytes into the same floats as the live service did.
"""

from __future__ import annotations

import math

# The time helpers are the mesh's shared contract (chain_bridge reads the same micros); they are
# re-exported here because the scorer's modules and the auditor's tools import them from here.
from gradients.timestamps import (  # noqa: F401
    EPOCH,
    MICROS,
    micros_to_iso,
    micros_to_seconds,
    micros_to_timestamp,
    parse_now,
    timestamp_seconds,
    timestamp_to_micros,
)
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import scorer_pb2 as sc
from services.scorer.logic import SubmissionResult, TaskInfo, TaskScoreResult
from services.scorer.scoring_config import ScoringConfig

# TaskScored.rank1_confidence and TaskResult.rank1_confidence are proto3 `optional`: left unset
# when no rank-1 confidence could be computed (fewer than two credited submissions, or no
# per-example losses); 0.0 would read as "certainly not", and NaN breaks JSON and comparisons.


# --------------------------------------------------------------------------- time


def live_now_micros(wall_us: int, previous_us: int | None, completed_at: float | None) -> int:
    """The "now" (whole microseconds) of a live computation: the wall clock, always later
    than the previous computation (windows only move forward, and each computation has its own
    "now", which is how chain_bridge tells newer scores from older) and never earlier than the
    task just scored (a worker's clock slightly ahead must not leave its task outside every window)."""
    now_us = max(wall_us, previous_us + 1 if previous_us is not None else 0)
    if completed_at is not None:
        now_us = max(now_us, math.ceil(completed_at * MICROS))
        while micros_to_seconds(now_us) < completed_at:  # float rounding at the edge
            now_us += 1
    return now_us


# --------------------------------------------------------------------------- EvalCompleted → logic


def loss_test_weight(task_type: int, config: ScoringConfig) -> float | None:
    """Weight of L_test when the bootstrap rebuilds L_weighted from per-example losses.

    Image: the eval worker's per-example test losses are already the δ-mix of eqs 16–17 and
    L_weighted = L_test, so the test losses alone rank (1.0). Other types: None → config ω.
    """
    return 1.0 if task_type == pb.IMAGE else None


def task_info(event: ev.EvalCompleted, config: ScoringConfig) -> TaskInfo:
    return TaskInfo(
        task_id=event.task_id,
        model_params_billions=event.base_model_params_b,
        hours=event.hours,
        completed_at=timestamp_seconds(event.completed_at),
        loss_test_weight=loss_test_weight(event.type, config),
    )


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def submission_result(result: pb.EvaluationResult) -> SubmissionResult:
    """One EvaluationResult as the scorer sees it.

    upload_time is 0 for every submission: the event carries the store's upload_seq, which
    orders uploads within a task (eq 9's "earliest"; ties by hotkey). A result the worker
    marked ok but with a non-finite loss is scored as failed, with that reason, rather than
    poisoning the whole task.
    """
    hotkey = result.miner_hotkey
    if not result.ok:
        return SubmissionResult(
            hotkey, valid=False, fail_reason=result.failure_reason or "evaluation failed", upload_seq=result.upload_seq
        )
    per_test, per_synth = tuple(result.per_example_test), tuple(result.per_example_synth)
    if not _finite(result.loss_test, result.loss_synth, result.loss_weighted, *per_test, *per_synth):
        return SubmissionResult(
            hotkey, valid=False, fail_reason="evaluation reported a non-finite loss", upload_seq=result.upload_seq
        )
    return SubmissionResult(
        miner_hotkey=hotkey,
        valid=True,
        l_test=result.loss_test,
        l_synth=result.loss_synth,
        l_weighted=result.loss_weighted,
        upload_seq=result.upload_seq,
        per_example_test=per_test,
        per_example_synth=per_synth,
    )


def submission_results(event: ev.EvalCompleted) -> list[SubmissionResult]:
    return [submission_result(r) for r in event.results]


# --------------------------------------------------------------------------- logic → protos


def score_protos(result: TaskScoreResult) -> list[pb.Score]:
    return [
        pb.Score(
            miner_hotkey=m.miner_hotkey,
            rank=m.rank,
            task_score=m.task_score,
            adjusted=m.adjusted,
            duplicate=m.duplicate,
            suspicious=m.suspicious,
            reason=m.reason,
        )
        for m in result.miners
    ]


def confidence_kwargs(result: TaskScoreResult) -> dict[str, float]:
    """The rank1_confidence field for a TaskScored / TaskResult: absent when undefined (None)."""
    return {} if result.rank1_confidence is None else {"rank1_confidence": result.rank1_confidence}


def stored_confidence(message: ev.TaskScored | sc.TaskResult) -> float | None:
    """The rank-1 confidence a stored message carries; None when absent. Records written before
    the field was optional carry NaN for "none", which reads as absent too."""
    if not message.HasField("rank1_confidence") or math.isnan(message.rank1_confidence):
        return None
    return message.rank1_confidence


def task_scored(result: TaskScoreResult, scored_at_us: int) -> ev.TaskScored:
    return ev.TaskScored(
        task_id=result.task_id,
        scores=score_protos(result),
        task_weight=result.task_weight,
        scoring_config_version=result.config_version,
        scored_at=micros_to_timestamp(scored_at_us),
        **confidence_kwargs(result),
    )
