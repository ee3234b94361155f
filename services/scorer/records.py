"""What the scorer stores, as plain encode/decode functions (no I/O).

- `LogEntry`: one scored task in the append-only audit log: the EvalCompleted it was scored
  from (the inputs, bytes as received), the TaskScored it produced, and the scoring config
  that produced it. An auditor recomputes every score from these.
- compact records: the (completed_at, S_adjusted per miner) the temporal aggregation needs,
  kept beside the log so a live recompute does not re-read every input.
- `Computation`: one live S_final computation: its "now", digest, and how many log entries
  it covered, so a replay can recompute exactly that computation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gradients.v1 import events_pb2 as ev
from services.scorer.conversion import micros_to_seconds, stored_confidence
from services.scorer.logic import ScoredTask, TaskScoreResult


@dataclass(frozen=True)
class LogEntry:
    task_id: str
    config_version: str
    config_digest: str
    eval_completed: bytes  # serialized EvalCompleted (the inputs)
    task_scored: bytes  # serialized TaskScored (the live result)

    def fields(self) -> dict[bytes, bytes]:
        return {
            b"task_id": self.task_id.encode(),
            b"config_version": self.config_version.encode(),
            b"config_digest": self.config_digest.encode(),
            b"eval": self.eval_completed,
            b"scored": self.task_scored,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> LogEntry:
        try:
            return cls(
                task_id=fields[b"task_id"].decode(),
                config_version=fields[b"config_version"].decode(),
                config_digest=fields[b"config_digest"].decode(),
                eval_completed=fields[b"eval"],
                task_scored=fields[b"scored"],
            )
        except KeyError as exc:
            raise ValueError(f"scorer log entry lacks field {exc.args[0]!r}") from None

    def event(self) -> ev.EvalCompleted:
        return ev.EvalCompleted.FromString(self.eval_completed)

    def scored(self) -> ev.TaskScored:
        return ev.TaskScored.FromString(self.task_scored)


def encode_record(record: ScoredTask) -> bytes:
    # json writes floats by repr: the shortest text that reads back as the same double.
    return json.dumps(
        {"t": record.completed_at, "a": [list(p) for p in record.adjusted]}, separators=(",", ":"), allow_nan=False
    ).encode()


def decode_record(task_id: str, raw: bytes) -> ScoredTask:
    body = json.loads(raw)
    return ScoredTask(task_id, body["t"], [(hk, v) for hk, v in body["a"]])


@dataclass(frozen=True)
class Computation:
    now_us: int
    digest: str
    log_length: int  # the first log_length log entries are the tasks this computation saw
    config_version: str
    trigger: str  # "task:<id>" or "refresh"

    @property
    def now(self) -> float:
        return micros_to_seconds(self.now_us)

    def fields(self) -> dict[bytes, bytes]:
        return {
            b"now_us": str(self.now_us).encode(),
            b"digest": self.digest.encode(),
            b"log_length": str(self.log_length).encode(),
            b"config_version": self.config_version.encode(),
            b"trigger": self.trigger.encode(),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Computation:
        return cls(
            now_us=int(fields[b"now_us"]),
            digest=fields[b"digest"].decode(),
            log_length=int(fields[b"log_length"]),
            config_version=fields[b"config_version"].decode(),
            trigger=fields[b"trigger"].decode(),
        )


def _same_float(a: float, b: float) -> bool:
    return a.hex() == b.hex() or (a != a and b != b)  # bit-for-bit, NaN equal to NaN


def scored_differences(stored: ev.TaskScored, recomputed: TaskScoreResult) -> list[str]:
    """How a stored TaskScored differs from a recomputation (empty when identical, bit for bit)."""
    problems: list[str] = []
    if stored.scoring_config_version != recomputed.config_version:
        problems.append(f"config version {stored.scoring_config_version!r} != {recomputed.config_version!r}")
    if not _same_float(stored.task_weight, recomputed.task_weight):
        problems.append(f"task_weight {stored.task_weight!r} != {recomputed.task_weight!r}")
    live_confidence, again_confidence = stored_confidence(stored), recomputed.rank1_confidence
    if (live_confidence is None) != (again_confidence is None) or (
        live_confidence is not None and not _same_float(live_confidence, again_confidence)
    ):
        problems.append(f"rank1_confidence {live_confidence!r} != {again_confidence!r}")
    live = {s.miner_hotkey: s for s in stored.scores}
    again = recomputed.by_hotkey()
    for hotkey in sorted(set(live) | set(again)):
        a, b = live.get(hotkey), again.get(hotkey)
        if a is None or b is None:
            problems.append(f"{hotkey}: only in the {'recomputation' if a is None else 'stored result'}")
            continue
        for name in ("task_score", "adjusted"):
            if not _same_float(getattr(a, name), getattr(b, name)):
                problems.append(f"{hotkey}: {name} {getattr(a, name)!r} != {getattr(b, name)!r}")
        for name in ("rank", "duplicate", "suspicious", "reason"):
            if getattr(a, name) != getattr(b, name):
                problems.append(f"{hotkey}: {name} {getattr(a, name)!r} != {getattr(b, name)!r}")
    return problems
