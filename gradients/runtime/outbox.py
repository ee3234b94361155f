"""Transactional outbox: events written in the same Redis transaction as the state they announce.

A crash between "state stored" and "event published" would otherwise lose the event (or,
publishing first, announce a change that never happened). Here the event is queued in
Redis inside the state's MULTI/EXEC, published right after, and removed once JetStream
acknowledged it; `flush()` at start-up publishes whatever a crashed process left behind.
Message ids are deterministic, so a flush racing another never publishes twice.

A flush that fails (NATS briefly away, a cluster electing a leader) leaves the events queued;
`keep_flushing`, run by every service host, retries them, so an event never waits for the
next change of its service (which may never come: a task waiting for its evaluation job).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import cast

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from redis.asyncio.client import Pipeline

from gradients.runtime import events, telemetry
from gradients.runtime.bus import EventBus
from gradients.runtime.loops import every
from gradients.runtime.store import Store

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, store: Store, bus: EventBus, name: str):
        self.store = store
        self.bus = bus
        self.key = store.key("outbox", name)
        bus.outboxes.append(self)  # retried by keep_flushing

    def add(self, pipe: Pipeline, subject: str, message: Message, msg_id: str, trace_parent: str = "") -> None:
        """Queue an event on `pipe` (inside the caller's transaction).

        The trace context is captured now (or `trace_parent` when no span is active), so
        the event joins the right trace whenever it is flushed.
        """
        headers = telemetry.inject_headers({})
        if "traceparent" not in headers and trace_parent:
            headers["traceparent"] = trace_parent
        envelope = json.dumps({"subject": subject, "payload": message.SerializeToString().hex(), "headers": headers})
        pipe.hset(self.key, msg_id, envelope)

    async def pending(self) -> int:
        return int(await self.store.redis.hlen(self.key))

    async def flush(self) -> int:
        """Publish every queued event; returns how many were published."""
        entries = await self.store.redis.hgetall(self.key)
        published = 0
        for raw_id, raw in sorted(entries.items()):
            msg_id = cast(bytes, raw_id).decode()
            envelope = json.loads(raw)
            message = events.message_type(envelope["subject"]).FromString(bytes.fromhex(envelope["payload"]))
            token = otel_context.attach(telemetry.extract_context(envelope["headers"]))
            try:
                await self.bus.publish(envelope["subject"], message, msg_id=msg_id)
            finally:
                otel_context.detach(token)
            await self.store.redis.hdel(self.key, msg_id)
            published += 1
        return published


async def keep_flushing(bus: EventBus, every_s: float = 1.0) -> None:
    """Publish what earlier flushes of this process's outboxes could not, every `every_s`."""
    await every(every_s, lambda: flush_pending(bus), name="outbox retry")


async def flush_pending(bus: EventBus) -> None:
    """One retry round over this process's outboxes; one still failing does not hold up the others."""
    for outbox in list(bus.outboxes):
        try:
            if await outbox.pending():
                published = await outbox.flush()
                log.info("outbox %s: published %d queued event(s) on retry", outbox.key, published)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # still away: next round
            log.warning("outbox %s: %d event(s) still queued: %s", outbox.key, await _pending_or_unknown(outbox), exc)


async def _pending_or_unknown(outbox: Outbox) -> int:
    try:
        return await outbox.pending()
    except Exception:
        return -1
