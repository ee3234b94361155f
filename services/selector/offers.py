"""Offers: their records in Redis and their delivery to whichever replica holds the miner's stream.

A miner's OpenSession stream lives on one gateway replica; the offer round may run on
another. So delivery goes over core NATS (not JetStream: an offer is worth nothing once
its answer window closed):
- `<ns>.gateway.session.<session_id>`: the round sends the offer as a request; the replica
  holding that session queues it on the stream and replies, so "nobody there" is known at once;
- `<ns>.gateway.answer.<offer_id>`: whichever replica receives AnswerOffer announces it.
Redis holds the truth (`offer:<id>` hash): an answer is recorded only while the offer is
pending and inside its window; the round closes an unanswered offer as `timeout`, after
which a late answer is refused. A decision is therefore made exactly once.
"""

from __future__ import annotations

import enum
import hashlib
import time

import nats.errors
from nats.aio.client import Client as NatsClient

from gradients.runtime import Store
from gradients.v1 import miner_gateway_pb2 as gw

OFFER_TTL_S = 7 * 24 * 3600


class OfferStatus(str, enum.Enum):  # noqa: UP042  (StrEnum would change str()/format() of members)
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    TIMEOUT = "timeout"  # delivered, not answered in time: counts as a decline
    UNDELIVERED = "undelivered"  # the miner's session was gone: counts as a decline

    @property
    def accepted(self) -> bool:
        return self is OfferStatus.ACCEPTED


# KEYS[1] offer hash; ARGV: hotkey, new status, now. Returns the outcome word.
_ANSWER = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if redis.call('HGET', KEYS[1], 'hotkey') ~= ARGV[1] then return 'foreign' end
if status ~= 'pending' then return status end
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[1], 'answer_by')) then return 'expired' end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return 'ok'
"""
# KEYS[1] offer hash; ARGV[1] status to set if still pending. Returns the final status.
_CLOSE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'pending' then redis.call('HSET', KEYS[1], 'status', ARGV[1]); return ARGV[1] end
return status
"""


def offer_id_for(task_id: str, attempt: int, hotkey: str) -> str:
    """Deterministic (a resumed round finds its offers again) and one NATS subject token."""
    return hashlib.sha256(f"{task_id}:{attempt}:{hotkey}".encode()).hexdigest()[:32]


class OfferBook:
    def __init__(self, store: Store, nc: NatsClient):
        self.store = store
        self.redis = store.redis
        self.nc = nc
        self._answer = self.redis.register_script(_ANSWER)
        self._close = self.redis.register_script(_CLOSE)

    def key(self, offer_id: str) -> str:
        return self.store.key("offer", offer_id)

    def session_subject(self, session_id: str) -> str:
        return f"{self.store.namespace}.gateway.session.{session_id}"

    def answer_subject(self, offer_id: str) -> str:
        return f"{self.store.namespace}.gateway.answer.{offer_id}"

    def create(self, pipe, offer: gw.Offer, hotkey: str, attempt: int) -> None:
        """Queue the pending offer record on `pipe`."""
        pipe.hset(
            self.key(offer.offer_id),
            mapping={
                "hotkey": hotkey,
                "task_id": offer.task_id,
                "attempt": attempt,
                "status": OfferStatus.PENDING.value,
                "answer_by": f"{offer.answer_by.ToNanoseconds() / 1e9:.6f}",
            },
        )
        pipe.expire(self.key(offer.offer_id), OFFER_TTL_S)

    async def status(self, offer_id: str) -> OfferStatus | None:
        raw = await self.redis.hget(self.key(offer_id), "status")
        return None if raw is None else OfferStatus(raw.decode())

    async def answer_by(self, offer_id: str) -> float:
        return float(await self.redis.hget(self.key(offer_id), "answer_by") or 0)

    async def hotkey(self, offer_id: str) -> str | None:
        raw = await self.redis.hget(self.key(offer_id), "hotkey")
        return None if raw is None else raw.decode()

    async def deliver(self, session_id: str, offer: gw.Offer, timeout_s: float) -> bool:
        """Hand the offer to the replica holding `session_id`; False when no session took it."""
        try:
            await self.nc.request(self.session_subject(session_id), offer.SerializeToString(), timeout=timeout_s)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False

    async def answer(self, offer_id: str, hotkey: str, accept: bool) -> str:
        """Record a miner's answer: 'ok', 'missing', 'foreign', 'expired' or the status it already has."""
        status = OfferStatus.ACCEPTED if accept else OfferStatus.DECLINED
        outcome = (
            await self._answer(keys=[self.key(offer_id)], args=[hotkey, status.value, f"{time.time():.6f}"])
        ).decode()
        if outcome == "ok":
            await self.nc.publish(self.answer_subject(offer_id), status.value.encode())
        return outcome

    async def close(self, offer_id: str, status: OfferStatus) -> OfferStatus:
        """Close a still-pending offer as `status`; returns the offer's final status."""
        return OfferStatus((await self._close(keys=[self.key(offer_id)], args=[status.value])).decode())
