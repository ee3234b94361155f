"""chain_bridge's Redis state: the pending scores and the last weights set.

  chain-pending   the newest ScoresUpdated not yet set on the backend (one, not a queue)
  chain-last      hash: weights = last WeightsSet, scores_at_us = "now" of the scores it came from
  chain-pending-traces  traceparents of the ScoresUpdated deliveries folded into the pending
                  vector since the last set (the weights-set span continues the newest and links the rest)

Only the newest pending vector matters: weights replace each other on chain, so while the
chain is unreachable a newer ScoresUpdated simply replaces the pending one, and an update
older than the pending or the last set one is ignored (a late redelivery). The pending entry
is persisted before the event is acked and cleared only in the transaction that records the
successful set, so it survives restarts and outages.
"""

from __future__ import annotations

from redis.exceptions import WatchError

from gradients.runtime import Store, events
from gradients.runtime.outbox import Outbox
from gradients.timestamps import timestamp_to_micros
from gradients.v1 import events_pb2 as ev

MAX_LINKED_TRACES = 32  # a long outage folds many updates; the newest are the ones worth opening


def scores_at_us(update: ev.ScoresUpdated) -> int:
    return timestamp_to_micros(update.at)


class WeightsState:
    def __init__(self, store: Store):
        self.store = store
        self.pending_key = store.key("chain-pending")
        self.last_key = store.key("chain-last")
        self.traces_key = store.key("chain-pending-traces")

    async def offer(self, update: ev.ScoresUpdated, trace_parent: str = "") -> bool:
        """Make `update` the pending vector unless a newer one is pending or already set."""
        redis, at = self.store.redis, scores_at_us(update)
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.pending_key, self.last_key)
                    last_at = await pipe.hget(self.last_key, b"scores_at_us")
                    if last_at is not None and at <= int(last_at):
                        return False
                    raw = await pipe.get(self.pending_key)
                    if raw is not None and at < scores_at_us(ev.ScoresUpdated.FromString(raw)):
                        return False
                    pipe.multi()
                    pipe.set(self.pending_key, update.SerializeToString())
                    if trace_parent:
                        pipe.rpush(self.traces_key, trace_parent)
                        pipe.ltrim(self.traces_key, -MAX_LINKED_TRACES, -1)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def pending(self) -> ev.ScoresUpdated | None:
        raw = await self.store.redis.get(self.pending_key)
        return None if raw is None else ev.ScoresUpdated.FromString(raw)

    async def pending_traces(self) -> list[str]:
        """Traceparents of the updates folded into the pending vector, oldest first."""
        return [raw.decode() for raw in await self.store.redis.lrange(self.traces_key, 0, -1)]

    async def last(self) -> ev.WeightsSet | None:
        raw = await self.store.redis.hget(self.last_key, b"weights")
        return None if raw is None else ev.WeightsSet.FromString(raw)

    async def record_set(self, update: ev.ScoresUpdated, weights: ev.WeightsSet, outbox: Outbox | None) -> None:
        """After a successful set: remember it, announce it (outbox), and clear the pending
        entry unless a newer one arrived meanwhile."""
        await self._settle(update, weights, outbox)

    async def drop(self, update: ev.ScoresUpdated) -> None:
        """Nothing to set for `update` (no registered miner with a positive weight)."""
        await self._settle(update, None, None)

    async def _settle(self, update: ev.ScoresUpdated, weights: ev.WeightsSet | None, outbox: Outbox | None) -> None:
        redis, at = self.store.redis, scores_at_us(update)
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.pending_key)
                    raw = await pipe.get(self.pending_key)
                    still_pending = raw is not None and scores_at_us(ev.ScoresUpdated.FromString(raw)) == at
                    pipe.multi()
                    if still_pending:
                        pipe.delete(self.pending_key, self.traces_key)
                    if weights is not None:
                        pipe.hset(
                            self.last_key,
                            mapping={b"weights": weights.SerializeToString(), b"scores_at_us": str(at).encode()},
                        )
                        if outbox is not None:
                            outbox.add(
                                pipe, events.WEIGHTS_SET, weights, f"weights:{weights.backend}:{weights.sequence}"
                            )
                    await pipe.execute()
                    return
                except WatchError:
                    continue
