"""The auditor's replay: every score recomputed from the scorer's append-only log.

For each log entry the task is scored again from its stored inputs (the EvalCompleted as
received) with the scoring config, and compared bit for bit with the TaskScored the live
scorer produced; then S_temporal and S_final (eqs 13–15) are recomputed over all tasks at a
"now" and digested. Replaying at the "now" of a live computation, over the log entries that
computation saw, must give the live digest exactly.

An entry scored under another config version than the one running here cannot be recomputed
(its rules are not this code's); its stored S_adjusted is used and it is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gradients.runtime import Store
from services.scorer.conversion import micros_to_seconds, submission_results, task_info, timestamp_seconds
from services.scorer.logic import ScoredTask, WeightsReplay, replay, score_task
from services.scorer.records import Computation, LogEntry, scored_differences
from services.scorer.repository import ScorerRepository
from services.scorer.scoring_config import DEFAULT_SCORING_CONFIG, ScoringConfig


class NothingToReplay(LookupError):
    """The log is empty: no task has been scored yet."""


@dataclass(frozen=True)
class TaskCheck:
    task_id: str
    problems: tuple[str, ...]


@dataclass(frozen=True)
class ReplayReport:
    now: float
    entries: int  # log entries replayed
    recomputed: int  # of which scored again from their inputs
    not_recomputed: tuple[str, ...]  # task ids scored under another config (stored scores used)
    mismatches: tuple[TaskCheck, ...]  # recomputed tasks whose result differs from the stored one
    result: WeightsReplay
    live: Computation | None = None  # the live computation at the same "now", when there is one

    @property
    def digest(self) -> str:
        return self.result.digest

    @property
    def matches_live(self) -> bool | None:
        return None if self.live is None else self.live.digest == self.result.digest

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.matches_live is not False


def _stored_record(entry: LogEntry) -> ScoredTask:
    event, scored = entry.event(), entry.scored()
    return ScoredTask(
        entry.task_id, timestamp_seconds(event.completed_at), {s.miner_hotkey: s.adjusted for s in scored.scores}
    )


def replay_entries(
    entries: Iterable[LogEntry],
    now: float,
    config: ScoringConfig = DEFAULT_SCORING_CONFIG,
    live: Computation | None = None,
) -> ReplayReport:
    records: list[ScoredTask] = []
    not_recomputed: list[str] = []
    mismatches: list[TaskCheck] = []
    count = 0
    for entry in entries:
        count += 1
        event = entry.event()
        if event.task_id != entry.task_id:
            mismatches.append(
                TaskCheck(entry.task_id, (f"entry names task {entry.task_id} but holds {event.task_id}",))
            )
        if entry.config_version != config.version or entry.config_digest != config.digest():
            not_recomputed.append(entry.task_id)
            records.append(_stored_record(entry))
            continue
        again = score_task(task_info(event, config), submission_results(event), config)
        problems = scored_differences(entry.scored(), again)
        if problems:
            mismatches.append(TaskCheck(entry.task_id, tuple(problems)))
        records.append(again.to_scored_task())
    result = replay(records, now, config)
    return ReplayReport(now, count, count - len(not_recomputed), tuple(not_recomputed), tuple(mismatches), result, live)


async def replay_store(
    store: Store, now: float | None = None, config: ScoringConfig = DEFAULT_SCORING_CONFIG
) -> ReplayReport:
    """Replay the log in `store`.

    now None: as of the last live computation, over the entries it saw (compared with it).
    now given: when a live computation used exactly this "now", over the entries it saw and
    compared with it; otherwise over the whole log, with nothing to compare against.
    """
    repo = ScorerRepository(store)
    live: Computation | None = None
    if now is None:
        latest = await repo.latest()
        if latest is None:
            raise NothingToReplay("the scorer has not computed any scores yet (its log is empty)")
        live = latest[0]
        now = live.now
    else:
        for computation in reversed(await repo.computations()):
            if micros_to_seconds(computation.now_us) == now:
                live = computation
                break
    entries = await repo.log_entries(live.log_length if live else None)
    if not entries:
        raise NothingToReplay("the scorer's log is empty: no task has been scored yet")
    return replay_entries(entries, now, config, live)
