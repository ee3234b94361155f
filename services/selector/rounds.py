"""The offer round of docs/flow.md step 4: draw the pool (eq 2), offer highest first, publish the outcome.

Idempotent under redelivery and crashes:
- one round per (task, attempt) at a time (a Redis lock the running round keeps renewing);
- every offer is recorded before it is sent, under a deterministic id, so a round resumed
  after a crash finds the offers already made, lets their answer windows run out, and goes on
  drawing without offering anyone twice;
- the outcome (MinersSelected) is stored together with its outbox entry in one transaction,
  then published with msg id `selected:<task_id>:<attempt>`; a redelivered event finds the
  stored outcome and publishes it again (JetStream drops the duplicate) instead of re-offering.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import nats.errors
from google.protobuf.timestamp_pb2 import Timestamp

from gradients.runtime import EventBus, Store, events, metrics
from gradients.runtime.outbox import Outbox
from gradients.task_types import category_of
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import miner_gateway_pb2 as gw
from services.selector.logic import MinerStanding, PoolSizeConfig, select_pool
from services.selector.offers import OfferBook, OfferStatus, offer_id_for
from services.selector.registry import MinerRegistry, utc_day

log = logging.getLogger(__name__)

ROUND_TTL_S = 7 * 24 * 3600
DELIVERY_TIMEOUT_S = 1.0


def round_rng(task_id: str, attempt: int) -> random.Random:
    """Seeded by task and attempt: an auditor can redo the draw."""
    return random.Random(int.from_bytes(hashlib.sha256(f"pool:{task_id}:{attempt}".encode()).digest()[:8], "big"))


def selected_msg_id(task_id: str, attempt: int) -> str:
    return f"selected:{task_id}:{attempt}"


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


@dataclass(frozen=True)
class RoundConfig:
    offer_timeout_s: float
    pool_sizes: PoolSizeConfig
    time_scale: float  # real seconds per nominal hour


class OfferRounds:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: MinerRegistry,
        book: OfferBook,
        outbox: Outbox,
        config: RoundConfig,
        uid_of: Callable[[str], int | None],
    ):
        self.store = store
        self.redis = store.redis
        self.bus = bus
        self.registry = registry
        self.book = book
        self.outbox = outbox
        self.config = config
        self.uid_of = uid_of

    # ---- keys -----------------------------------------------------------------------------

    def _round_key(self, task_id: str, attempt: int, part: str) -> str:
        return self.store.key("offer-round", task_id, str(attempt), part)

    def _offered_key(self, task_id: str) -> str:
        """Hotkeys offered this task in any attempt (never offered again, unless the offer never reached them)."""
        return self.store.key("task-offered", task_id)

    # ---- entry point ------------------------------------------------------------------------

    async def handle(self, task: pb.Task) -> ev.MinersSelected:
        """Run (or resume, or replay) the round for the task's current attempt."""
        attempt = task.delay_attempts
        outcome = await self.stored_outcome(task.task_id, attempt)
        if outcome is None:
            async with self._lock(task.task_id, attempt):
                outcome = await self.stored_outcome(task.task_id, attempt)
                if outcome is None:
                    outcome = await self._run(task, attempt)
                    await self._store_outcome(task, outcome)
                    new_accepts = len(set(outcome.accepted) - set(task.miner_hotkeys))
                    metrics.offers.add(new_accepts, {"outcome": "accepted"})
                    metrics.offers.add(len(outcome.declined), {"outcome": "declined"})
                    await self.outbox.flush()
                    return outcome
        await self.bus.publish(events.MINERS_SELECTED, outcome, msg_id=selected_msg_id(task.task_id, attempt))
        return outcome

    async def stored_outcome(self, task_id: str, attempt: int) -> ev.MinersSelected | None:
        raw = await self.redis.get(self._round_key(task_id, attempt, "outcome"))
        return None if raw is None else ev.MinersSelected.FromString(raw)

    async def _store_outcome(self, task: pb.Task, outcome: ev.MinersSelected) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                self._round_key(task.task_id, outcome.attempt, "outcome"), outcome.SerializeToString(), ex=ROUND_TTL_S
            )
            self.outbox.add(
                pipe,
                events.MINERS_SELECTED,
                outcome,
                selected_msg_id(task.task_id, outcome.attempt),
                trace_parent=task.trace_parent,
            )
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def _lock(self, task_id: str, attempt: int) -> AsyncIterator[None]:
        """One running round per (task, attempt); a crashed holder's lock expires after ttl."""
        key = self._round_key(task_id, attempt, "lock")
        token = uuid.uuid4().hex
        ttl_ms = int(max(3.0, 2 * self.config.offer_timeout_s) * 1000)
        while not await self.redis.set(key, token, nx=True, px=ttl_ms):
            if await self.redis.exists(self._round_key(task_id, attempt, "outcome")):
                yield  # the other holder finished: the caller replays its outcome
                return
            await asyncio.sleep(0.2)

        async def renew() -> None:
            while True:
                await asyncio.sleep(ttl_ms / 3000)
                await self.redis.set(key, token, xx=True, px=ttl_ms)

        renewer = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if (await self.redis.get(key)) == token.encode():
                await self.redis.delete(key)

    # ---- the round ----------------------------------------------------------------------

    async def _fixed(self, task_id: str, attempt: int, name: str, proposed: float) -> float:
        """The value first proposed for this attempt: a resumed round keeps its deadline and pool size."""
        key = self._round_key(task_id, attempt, name)
        await self.redis.set(key, repr(proposed), nx=True, ex=ROUND_TTL_S)
        value = float(await self.redis.get(key))
        return int(value) if isinstance(proposed, int) else value

    async def _deadline(self, task: pb.Task, attempt: int) -> float:
        """now + hours × time scale, fixed once per attempt."""
        return await self._fixed(
            task.task_id, attempt, "deadline", float(int(time.time() + task.hours * self.config.time_scale))
        )

    async def _run(self, task: pb.Task, attempt: int) -> ev.MinersSelected:
        deadline = await self._deadline(task, attempt)
        earlier = list(dict.fromkeys(task.miner_hotkeys))  # accepted in earlier attempts
        offers_key = self._round_key(task.task_id, attempt, "offers")

        accepted: list[str] = []
        declined: list[str] = []
        # Resume: offers this round already made (before a crash) keep their answers.
        for raw in await self.redis.lrange(offers_key, 0, -1):
            hotkey, status = await self._finish_earlier_offer(raw.decode())
            if hotkey is not None:
                (accepted if status.accepted else declined).append(hotkey)

        rng = round_rng(task.task_id, attempt)
        standings = await self.registry.connected_standings(self.uid_of)
        offered_ever = {h.decode() for h in await self.redis.smembers(self._offered_key(task.task_id))}
        excluded = set(earlier) | offered_ever
        this_round = set(accepted) | set(declined)
        n_available = sum(1 for m in standings if m.hotkey not in excluded or m.hotkey in this_round)
        drawn_size = self.config.pool_sizes.pool_size_for(category_of(task.type), n_available + len(earlier), rng)
        pool_size = await self._fixed(task.task_id, attempt, "pool-size", drawn_size)
        target = max(pool_size - len(earlier), 0)
        log.info(
            "offer round task=%s attempt=%d: pool %d, %d earlier, %d candidates",
            task.task_id,
            attempt,
            pool_size,
            len(earlier),
            n_available,
            extra={"task_id": task.task_id},
        )

        while len(accepted) < target:
            batch = select_pool(standings, target - len(accepted), rng, exclude=excluded, tie_break_salt=task.task_id)
            if not batch:
                break
            for standing in batch:
                excluded.add(standing.hotkey)
                status = await self._offer(task, attempt, standing, deadline)
                (accepted if status.accepted else declined).append(standing.hotkey)
                if len(accepted) >= target:
                    break
            # Between batches: miners may have connected or gone.
            standings = await self.registry.connected_standings(self.uid_of)

        all_accepted = earlier + [h for h in accepted if h not in earlier]
        return ev.MinersSelected(
            task_id=task.task_id,
            accepted=all_accepted,
            declined=declined,
            enough=len(all_accepted) >= pool_size > 0,
            attempt=attempt,
            deadline=timestamp(deadline),
        )

    async def _finish_earlier_offer(self, offer_id: str) -> tuple[str | None, OfferStatus]:
        hotkey = await self.book.hotkey(offer_id)
        if hotkey is None:
            return None, OfferStatus.UNDELIVERED
        status = await self.book.status(offer_id)
        if status is OfferStatus.PENDING:
            await asyncio.sleep(max(0.0, await self.book.answer_by(offer_id) - time.time()))
            status = await self.book.close(offer_id, OfferStatus.TIMEOUT)
            if status.accepted:
                await self._mark_took_part(hotkey)
        return hotkey, status

    def _offer_message(self, task: pb.Task, attempt: int, hotkey: str, deadline: float) -> gw.Offer:
        return gw.Offer(
            offer_id=offer_id_for(task.task_id, attempt, hotkey),
            task_id=task.task_id,
            type=task.type,
            base_model=task.base_model,
            hours=task.hours,
            answer_by=timestamp(time.time() + self.config.offer_timeout_s),
            deadline=timestamp(deadline),
            train_rows=task.splits.train.rows,
            schema=list(task.splits.schema),
        )

    async def _offer(self, task: pb.Task, attempt: int, standing: MinerStanding, deadline: float) -> OfferStatus:
        """Send one offer and wait for its answer; no answer within the timeout = decline."""
        offer = self._offer_message(task, attempt, standing.hotkey, deadline)
        async with self.redis.pipeline(transaction=True) as pipe:
            self.book.create(pipe, offer, standing.hotkey, attempt)
            pipe.rpush(self._round_key(task.task_id, attempt, "offers"), offer.offer_id)
            pipe.expire(self._round_key(task.task_id, attempt, "offers"), ROUND_TTL_S)
            pipe.sadd(self._offered_key(task.task_id), standing.hotkey)
            pipe.expire(self._offered_key(task.task_id), ROUND_TTL_S)
            await pipe.execute()

        session_id = await self.registry.session_of(standing.hotkey)
        delivered = False
        if session_id is not None:
            answers = await self.bus.nc.subscribe(self.book.answer_subject(offer.offer_id), max_msgs=1)
            try:
                delivered = await self.book.deliver(session_id, offer, DELIVERY_TIMEOUT_S)
                if delivered:
                    remaining = offer.answer_by.ToNanoseconds() / 1e9 - time.time()
                    with contextlib.suppress(nats.errors.TimeoutError, asyncio.TimeoutError):
                        await answers.next_msg(timeout=max(remaining, 0.001))
            finally:
                with contextlib.suppress(Exception):
                    await answers.unsubscribe()
        status = await self.book.close(offer.offer_id, OfferStatus.TIMEOUT if delivered else OfferStatus.UNDELIVERED)
        if status is OfferStatus.UNDELIVERED:
            # Never reached the miner (a stale session, e.g. after a selector restart): not its decline,
            # so a later attempt may offer it again.
            await self.redis.srem(self._offered_key(task.task_id), standing.hotkey)
        if status.accepted:
            await self._mark_took_part(standing.hotkey)
        log.info(
            "offer %s to %s: %s",
            offer.offer_id,
            standing.hotkey,
            status.value,
            extra={"task_id": task.task_id, "miner_hotkey": standing.hotkey},
        )
        return status

    async def _mark_took_part(self, hotkey: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.registry.mark_took_part(pipe, hotkey, utc_day())
            await pipe.execute()
