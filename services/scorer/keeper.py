"""Scoring with its side effects: one Redis transaction per scored task.

For a task that completed evaluation: eqs 9–12 (pure, `logic.score_task`), then in ONE
transaction: the per-task result, the audit-log entry (inputs + TaskScored), the compact
record, S_final for every miner over the windows (eqs 13–15) as of a recorded "now", and the
outbox entries for `gradients.task.scored` and `gradients.scores.updated`. So a task is
scored exactly once (its result key is the marker, watched by the transaction), a crash
never leaves a score without its events, and concurrent scorers serialise on the watched
keys rather than computing S_final from a stale set of tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import WatchError

from gradients.runtime import EventBus, Store, events
from gradients.runtime.outbox import Outbox
from gradients.v1 import events_pb2 as ev
from gradients.v1 import scorer_pb2 as sc
from services.scorer.conversion import (
    confidence_kwargs,
    live_now_micros,
    micros_to_seconds,
    micros_to_timestamp,
    score_protos,
    submission_results,
    task_info,
    task_scored,
)
from services.scorer.logic import ScoredTask, TaskScoreResult, WeightsReplay, build_score_table, recompute, score_task
from services.scorer.records import Computation, LogEntry, decode_record, encode_record
from services.scorer.repository import ScorerRepository
from services.scorer.scoring_config import DAY_S, DEFAULT_SCORING_CONFIG, ScoringConfig

log = logging.getLogger(__name__)

COMPUTATIONS_KEPT = 100_000
# Compact records older than the longest window (plus this margin) can no longer count at any
# later "now"; they are dropped from the live set (the audit log keeps everything).
PRUNE_MARGIN_S = DAY_S


def wall_micros() -> int:
    return time.time_ns() // 1000


def scores_updated(weights: WeightsReplay, now_us: int) -> ev.ScoresUpdated:
    """Per-miner S_final and S_temporal, best first (ties by hotkey), with the digest."""
    rows = sorted(zip(weights.hotkeys, weights.final, weights.temporal), key=lambda r: (-r[1], r[0]))
    return ev.ScoresUpdated(
        scores=[ev.MinerFinalScore(miner_hotkey=hk, final_score=f, temporal_score=t) for hk, f, t in rows],
        digest=weights.digest,
        at=micros_to_timestamp(now_us),
    )


@dataclass(frozen=True)
class _NewTask:
    event: ev.EvalCompleted
    result: TaskScoreResult
    record: ScoredTask


class ScoreKeeper:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        config: ScoringConfig = DEFAULT_SCORING_CONFIG,
        clock_us: Callable[[], int] = wall_micros,
    ):
        self.store = store
        self.repo = ScorerRepository(store)
        self.outbox = Outbox(store, bus, "scorer")
        self.config = config
        self.clock_us = clock_us

    async def score(self, event: ev.EvalCompleted) -> Computation | None:
        """Score one completed evaluation; None when the task was already scored."""
        if await self.store.redis.exists(self.repo.results.key(event.task_id)):
            await self.outbox.flush()  # a redelivery after a crash: make sure its events went out
            return None
        result = score_task(task_info(event, self.config), submission_results(event), self.config)
        task = _NewTask(event, result, result.to_scored_task())
        return await self._recompute(task, trigger=f"task:{event.task_id}", scores_msg_id=f"scores:{event.task_id}")

    async def refresh(self, min_age_s: float) -> Computation | None:
        """Recompute S_final at the current time when the last computation is older than
        `min_age_s` (windows age even when no task arrives); None when nothing was done."""
        latest = await self.repo.latest()
        if latest is None:
            return None
        computation, _ = latest
        if micros_to_seconds(self.clock_us() - computation.now_us) < min_age_s:
            return None
        return await self._recompute(None, trigger="refresh", scores_msg_id=None)

    async def _recompute(self, task: _NewTask | None, trigger: str, scores_msg_id: str | None) -> Computation | None:
        repo, redis = self.repo, self.store.redis
        watched = [repo.records_key, repo.latest_key, repo.log_key]
        if task is not None:
            watched.append(repo.results.key(task.result.task_id))
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*watched)
                    if task is not None and await pipe.exists(repo.results.key(task.result.task_id)):
                        return None
                    records = {
                        k.decode(): decode_record(k.decode(), v)
                        for k, v in (await pipe.hgetall(repo.records_key)).items()
                    }
                    previous = await pipe.hget(repo.latest_key, b"now_us")
                    log_length = int(await pipe.xlen(repo.log_key))
                    if task is not None:
                        records[task.result.task_id] = task.record
                        log_length += 1
                    elif not records:
                        return None
                    now_us = live_now_micros(
                        self.clock_us(), int(previous) if previous else None, task.record.completed_at if task else None
                    )
                    now = micros_to_seconds(now_us)
                    weights = recompute(build_score_table(records.values()), now, self.config)
                    computation = Computation(now_us, weights.digest, log_length, self.config.version, trigger)
                    update = scores_updated(weights, now_us)
                    cutoff = now - max(self.config.window_seconds) - PRUNE_MARGIN_S
                    stale = [
                        m.decode() for m in await pipe.zrangebyscore(repo.record_times_key, "-inf", f"({cutoff!r}")
                    ]

                    pipe.multi()
                    if task is not None:
                        self._queue_task(pipe, task, now_us)
                    if stale:
                        pipe.hdel(repo.records_key, *stale)
                        pipe.zrem(repo.record_times_key, *stale)
                    pipe.delete(repo.latest_key)
                    pipe.hset(repo.latest_key, mapping={b"event": update.SerializeToString(), **computation.fields()})
                    pipe.xadd(repo.computations_key, computation.fields(), maxlen=COMPUTATIONS_KEPT, approximate=True)
                    self.outbox.add(pipe, events.SCORES_UPDATED, update, scores_msg_id or f"scores:refresh:{now_us}")
                    await pipe.execute()
                except WatchError:
                    continue
            break
        log.info(
            "scores updated (%s): %d miners, %d tasks in the log, digest %s",
            trigger,
            len(weights.hotkeys),
            log_length,
            weights.digest[:16],
            extra={"task_id": task.result.task_id if task else ""},
        )
        await self.outbox.flush()
        return computation

    def _queue_task(self, pipe, task: _NewTask, now_us: int) -> None:
        repo, result = self.repo, task.result
        scored = task_scored(result, now_us)
        entry = LogEntry(
            result.task_id,
            self.config.version,
            self.config.digest(),
            task.event.SerializeToString(),
            scored.SerializeToString(),
        )
        pipe.xadd(repo.log_key, entry.fields())
        repo.results.put(
            pipe,
            result.task_id,
            sc.TaskResult(
                task_id=result.task_id,
                scores=score_protos(result),
                results=list(task.event.results),
                task_weight=result.task_weight,
                **confidence_kwargs(result),
            ),
        )
        pipe.hset(repo.records_key, result.task_id, encode_record(task.record))
        pipe.zadd(repo.record_times_key, {result.task_id: task.record.completed_at})
        self.outbox.add(pipe, events.TASK_SCORED, scored, f"scored:{result.task_id}")
