"""The scorer's Redis keys (all under the mesh namespace) and the reads over them.

  scorer-task:<task_id>     TaskResult proto (per-task ranks, losses, flags), index scorer-task-index
  scorer-log                stream, append-only: one LogEntry per scored task (the audit log)
  scorer-records            hash task_id → compact record (completed_at, S_adjusted per miner)
  scorer-record-times       zset task_id → completed_at (to prune records no window can reach)
  scorer-latest             hash: the last live computation (ScoresUpdated bytes + Computation)
  scorer-computations       stream of every live computation (now, digest, log length), capped

Writes happen in `ScoreKeeper` (one transaction per scored task).
"""

from __future__ import annotations

from gradients.runtime import ProtoRepository, Store
from gradients.v1 import events_pb2 as ev
from gradients.v1 import scorer_pb2 as sc
from services.scorer.logic import ScoredTask
from services.scorer.records import Computation, LogEntry, decode_record

LOG_PAGE = 500


class ScorerRepository:
    def __init__(self, store: Store):
        self.store = store
        self.results: ProtoRepository[sc.TaskResult] = ProtoRepository(store, "scorer-task", sc.TaskResult)
        self.log_key = store.key("scorer-log")
        self.records_key = store.key("scorer-records")
        self.record_times_key = store.key("scorer-record-times")
        self.latest_key = store.key("scorer-latest")
        self.computations_key = store.key("scorer-computations")

    async def result(self, task_id: str) -> sc.TaskResult | None:
        return await self.results.get(task_id)

    async def latest(self) -> tuple[Computation, ev.ScoresUpdated] | None:
        raw = await self.store.redis.hgetall(self.latest_key)
        return parse_latest(raw)

    async def latest_with_records(self) -> tuple[tuple[Computation, ev.ScoresUpdated] | None, list[ScoredTask]]:
        """The last computation and the records it was computed from, read atomically."""
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.latest_key)
            pipe.hgetall(self.records_key)
            latest_raw, records_raw = await pipe.execute()
        records = [decode_record(k.decode(), v) for k, v in records_raw.items()]
        return parse_latest(latest_raw), records

    async def log_length(self) -> int:
        return int(await self.store.redis.xlen(self.log_key))

    async def log_entries(self, limit: int | None = None) -> list[LogEntry]:
        """The first `limit` log entries (all when None), in append order."""
        entries: list[LogEntry] = []
        start = "-"
        while limit is None or len(entries) < limit:
            count = LOG_PAGE if limit is None else min(LOG_PAGE, limit - len(entries))
            page = await self.store.redis.xrange(self.log_key, min=start, max="+", count=count)
            if not page:
                break
            entries.extend(LogEntry.from_fields(fields) for _, fields in page)
            start = "(" + page[-1][0].decode()
        return entries

    async def computations(self) -> list[Computation]:
        rows = await self.store.redis.xrange(self.computations_key)
        return [Computation.from_fields(fields) for _, fields in rows]


def parse_latest(raw: dict[bytes, bytes]) -> tuple[Computation, ev.ScoresUpdated] | None:
    if not raw:
        return None
    return Computation.from_fields(raw), ev.ScoresUpdated.FromString(raw[b"event"])
