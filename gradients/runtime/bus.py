"""The event bus: a thin layer over nats-py JetStream.

- one stream for domain events (`gradients.>`), one work-queue stream for jobs
  (`jobs.>`), one for dead letters (`dlq.>`), each with age and size limits
  (GRADIENTS_STREAM_*) that a starting service applies to an existing stream too;
- protobuf payloads, typed by subject (events.py), with a `Nats-Msg-Id` so a
  re-published event is de-duplicated by the server;
- a durable pull consumer per service and purpose; a message is acked only after its
  handler returned (the handler stores its effect first), a failure is nak'ed with a
  delay, and after `max_deliver` deliveries the message goes to `dlq.<durable>`;
- a *transient* failure (Redis, NATS or a peer service briefly unreachable) does not count
  toward that bound: it is retried with exponential backoff (capped) for as long as an
  outage plausibly lasts, so a restart of Redis or a neighbour loses nothing;
- W3C trace context in headers, with PRODUCER and CONSUMER spans carrying `messaging.*`
  attributes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind, Status, StatusCode

from gradients.runtime import events, telemetry

if TYPE_CHECKING:
    from gradients.runtime.outbox import Outbox

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
EVENT_TYPE = "Gm-Event-Type"
DLQ_REASON = "Gm-Dead-Letter-Reason"
DLQ_SUBJECT = "Gm-Original-Subject"
DUPLICATE_WINDOW_S = 3600.0


TRANSIENT_MAX_DELAY_S = 30.0
TRANSIENT_MAX_DELIVER = 1000  # at the capped delay, about eight hours of outage


class MalformedEvent(ValueError):
    """The payload cannot be decoded as the subject's message type."""


def is_transient(exc: BaseException) -> bool:
    """True when the failure says infrastructure is briefly away, not that the event is bad:
    Redis or NATS connection loss or timeout, a peer gRPC service UNAVAILABLE."""
    import grpc
    import redis.exceptions as redis_errors

    if isinstance(
        exc,
        (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            redis_errors.BusyLoadingError,
            nats.errors.ConnectionClosedError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.js.errors.ServiceUnavailableError,
            ConnectionError,
            asyncio.TimeoutError,
        ),
    ):
        return True
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


@dataclass
class Delivery:
    """What a handler learns about the message besides its payload."""

    subject: str
    msg_id: str
    num_delivered: int
    durable: str
    headers: dict[str, str]
    msg: Msg = field(repr=False)

    async def in_progress(self) -> None:
        """Tell the server the handler is still working (resets the ack-wait timer)."""
        await self.msg.in_progress()


Handler = Callable[[Message, Delivery], Awaitable[None]]


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer: one per service and purpose."""

    durable: str
    subject: str
    handler: Handler
    concurrency: int = 1


def decode(subject: str, data: bytes, headers: dict[str, str] | None) -> Message:
    cls = events.message_type(subject)
    sent_type = (headers or {}).get(EVENT_TYPE)
    if sent_type and sent_type != cls.DESCRIPTOR.full_name:
        raise MalformedEvent(f"{subject} carries {sent_type}, expected {cls.DESCRIPTOR.full_name}")
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise MalformedEvent(f"cannot decode {cls.DESCRIPTOR.full_name} on {subject}: {exc}") from exc


# What ensure_streams sets on a stream and keeps up to date (retention and storage cannot change
# on an existing stream; replicas change only on a cluster, by the operator).
OWNED_FIELDS = ("subjects", "max_age", "max_bytes", "discard", "duplicate_window")


def stream_config(stream: events.StreamDef, limits: events.StreamLimits, replicas: int) -> js_api.StreamConfig:
    """The JetStream config of one of the mesh's streams, with the given limits."""
    max_age = limits.max_age_s if limits.max_age_s > 0 else 0.0
    return js_api.StreamConfig(
        name=stream.name,
        subjects=list(stream.subjects),
        storage=js_api.StorageType.FILE,
        retention=js_api.RetentionPolicy.WORK_QUEUE if stream.work_queue else js_api.RetentionPolicy.LIMITS,
        # The server refuses a duplicate window longer than max_age.
        duplicate_window=min(DUPLICATE_WINDOW_S, max_age) if max_age else DUPLICATE_WINDOW_S,
        max_age=max_age,
        max_bytes=limits.max_bytes if limits.max_bytes > 0 else -1,
        # A full work queue refuses new jobs (the outbox retries them); dropping the oldest would lose work.
        discard=js_api.DiscardPolicy.NEW if stream.work_queue else js_api.DiscardPolicy.OLD,
        num_replicas=replicas,
    )


def stream_config_changes(current: js_api.StreamConfig, wanted: js_api.StreamConfig) -> list[str]:
    """The owned fields where `current` (as the server reports it) differs from `wanted`."""

    def norm(name: str, value: Any) -> Any:
        if name == "subjects":
            return sorted(value or [])
        if name in ("max_age", "duplicate_window"):
            return round(float(value or 0.0), 3)
        if name == "max_bytes":
            return -1 if value in (None, 0) or value < 0 else value
        return getattr(value, "value", value)  # discard: an enum here, a string from the server

    return [
        f"{name} {getattr(current, name)!r} -> {getattr(wanted, name)!r}"
        for name in OWNED_FIELDS
        if norm(name, getattr(current, name)) != norm(name, getattr(wanted, name))
    ]


class EventBus:
    def __init__(
        self,
        nc: NatsClient,
        service: str,
        *,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        nak_delay_s: float = 1.0,
        replicas: int = 1,
        stream_limits: Mapping[str, events.StreamLimits] | None = None,
    ):
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.nak_delay_s = nak_delay_s
        self.replicas = replicas
        # Given (a service host, from MeshSettings): streams are created with these limits and an
        # existing stream whose config differs is updated. None (test drivers, tools): missing
        # streams get the defaults and existing ones are left as they are.
        self.stream_limits = stream_limits
        self._tracer = telemetry.tracer("gradients.bus")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.outboxes: list[Outbox] = []  # the transactional outboxes publishing through this bus (outbox.py)

    @classmethod
    async def connect(cls, url: str, service: str, **kwargs: Any) -> EventBus:
        servers = [u.strip() for u in url.split(",") if u.strip()]
        nc = await nats.connect(
            servers=servers,
            name=service,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
        )
        bus = cls(nc, service, **kwargs)
        await bus.ensure_streams()
        return bus

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def ensure_streams(self) -> None:
        for stream in events.STREAMS:
            config = stream_config(stream, (self.stream_limits or {}).get(stream.name, stream.limits), self.replicas)
            try:
                info = await self.js.stream_info(stream.name)
            except NotFoundError:
                try:
                    await self.js.add_stream(config)
                    continue
                except Exception:  # another service created it first
                    info = await self.js.stream_info(stream.name)
            if self.stream_limits is None:
                continue
            changed = stream_config_changes(info.config, config)
            if changed:
                log.info("stream %s: updating %s", stream.name, "; ".join(changed))
                await self.js.update_stream(
                    dataclasses.replace(info.config, **{k: getattr(config, k) for k in OWNED_FIELDS})
                )

    # ---- publishing ------------------------------------------------------------------

    async def publish(self, subject: str, message: Message, msg_id: str, headers: dict[str, str] | None = None) -> int:
        """Publish `message` on `subject`; `msg_id` de-duplicates re-publication."""
        expected = events.message_type(subject)
        if not isinstance(message, expected):
            raise TypeError(f"{subject} carries {expected.__name__}, got {type(message).__name__}")
        with self._tracer.start_as_current_span(
            f"send {subject}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.operation.type": "send",
                "messaging.message.id": msg_id,
                "messaging.message.body.size": message.ByteSize(),
            },
        ) as span:
            for key, value in telemetry.names_in(message).items():
                span.set_attribute(telemetry.ABOUT_ATTRIBUTES[key], value)
            hdrs = {MSG_ID: msg_id, EVENT_TYPE: message.DESCRIPTOR.full_name, **(headers or {})}
            telemetry.inject_headers(hdrs)
            ack = await self.js.publish(subject, message.SerializeToString(), headers=hdrs)
            return ack.seq

    async def publish_raw(self, subject: str, payload: bytes, msg_id: str) -> None:
        """Publish bytes as-is (for tests of malformed input and for dead letters)."""
        await self.js.publish(subject, payload, headers={MSG_ID: msg_id})

    # ---- consuming -------------------------------------------------------------------

    async def start(self, consumers: list[Consumer]) -> None:
        for consumer in consumers:
            stream = events.stream_for(consumer.subject)
            config = js_api.ConsumerConfig(
                durable_name=consumer.durable,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s,
                # Dead-lettering is ours (below). Transient failures are retried far beyond
                # max_deliver, so the server's backstop sits above that bound.
                max_deliver=TRANSIENT_MAX_DELIVER + 2,
                filter_subject=consumer.subject,
                max_ack_pending=max(consumer.concurrency * 4, 16),
            )
            sub = await self.js.pull_subscribe(
                consumer.subject, durable=consumer.durable, stream=stream.name, config=config
            )
            for _ in range(consumer.concurrency):
                self._tasks.append(asyncio.create_task(self._pull_loop(sub, consumer), name=consumer.durable))

    async def _pull_loop(self, sub: JetStreamContext.PullSubscription, consumer: Consumer) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(batch=1, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection hiccup: keep trying while not stopping
                if self._stopping.is_set():
                    return
                log.warning("fetch failed on %s: %s", consumer.durable, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                if self._stopping.is_set():
                    await self._settle(msg.nak(delay=0))  # leave it for another instance
                    continue
                await self._process(msg, consumer)

    async def _process(self, msg: Msg, consumer: Consumer) -> None:
        self._in_flight += 1
        self._idle.clear()
        headers = dict(msg.headers or {})
        meta = msg.metadata
        delivery = Delivery(
            subject=msg.subject,
            msg_id=headers.get(MSG_ID, f"{meta.stream}:{meta.sequence.stream}"),
            num_delivered=meta.num_delivered,
            durable=consumer.durable,
            headers=headers,
            msg=msg,
        )
        parent = telemetry.extract_context(headers)
        try:
            if delivery.num_delivered > TRANSIENT_MAX_DELIVER:
                # Delivered this often without being settled: the consumer keeps crashing or timing out on it.
                await self._dead_letter(
                    msg, delivery, f"delivered {delivery.num_delivered} times without being settled"
                )
                return
            with self._tracer.start_as_current_span(
                f"process {msg.subject}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": msg.subject,
                    "messaging.operation.type": "process",
                    "messaging.consumer.group.name": consumer.durable,
                    "messaging.message.id": delivery.msg_id,
                    "messaging.nats.delivery_count": meta.num_delivered,
                },
            ) as span:
                try:
                    event = decode(msg.subject, msg.data, headers)
                    heartbeat = asyncio.create_task(self._heartbeat(msg))
                    try:
                        with telemetry.about(**telemetry.names_in(event)):
                            await consumer.handler(event, delivery)
                    finally:
                        heartbeat.cancel()
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    await self._failed(msg, delivery, exc)
                    return
                await self._settle(msg.ack())
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _heartbeat(self, msg: Msg) -> None:
        # Long handlers (evaluation) keep their message: reset ack-wait well before it expires.
        while True:
            await asyncio.sleep(max(self.ack_wait_s / 3, 0.2))
            try:
                await msg.in_progress()
            except Exception:
                return

    async def _failed(self, msg: Msg, delivery: Delivery, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if is_transient(exc) and delivery.num_delivered < TRANSIENT_MAX_DELIVER:
            delay = min(TRANSIENT_MAX_DELAY_S, self.nak_delay_s * 2.0 ** min(delivery.num_delivered - 1, 16))
            log.warning(
                "handler failed on %s (delivery %d, transient; retry in %.1fs): %s",
                delivery.subject,
                delivery.num_delivered,
                delay,
                reason,
                extra={"subject": delivery.subject, "durable": delivery.durable},
            )
            await self._settle(msg.nak(delay=delay))
        elif delivery.num_delivered >= self.max_deliver:
            await self._dead_letter(msg, delivery, reason)
        else:
            log.warning(
                "handler failed on %s (delivery %d of %d): %s",
                delivery.subject,
                delivery.num_delivered,
                self.max_deliver,
                reason,
                extra={"subject": delivery.subject, "durable": delivery.durable},
            )
            await self._settle(msg.nak(delay=self.nak_delay_s))

    async def _dead_letter(self, msg: Msg, delivery: Delivery, reason: str) -> None:
        log.error(
            "dead-lettering %s after %d deliveries: %s",
            delivery.subject,
            delivery.num_delivered,
            reason,
            extra={"subject": delivery.subject, "durable": delivery.durable},
        )
        dlq_headers = {
            MSG_ID: f"{delivery.durable}:{delivery.msg_id}",
            DLQ_REASON: reason[:1000],
            DLQ_SUBJECT: delivery.subject,
            **{k: v for k, v in delivery.headers.items() if k not in (MSG_ID,)},
        }
        try:
            await self.js.publish(events.dead_letter_subject(delivery.durable), msg.data, headers=dlq_headers)
        except Exception as exc:  # not terminated: the message comes back and is dead-lettered then
            log.warning("could not dead-letter %s yet: %s", delivery.subject, exc)
            await self._settle(msg.nak(delay=self.nak_delay_s))
            return
        await self._settle(msg.term())

    @staticmethod
    async def _settle(op: Awaitable[None]) -> None:
        try:
            await op
        except Exception as exc:  # already acked / connection gone: redelivery covers it
            log.debug("ack/nak failed: %s", exc)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking work, let in-flight handlers finish (up to grace), then drain."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("in-flight handlers did not finish in %.1fs; they will be redelivered", grace_s)
        from gradients.runtime.server import cancel_all

        await cancel_all(self._tasks)
        self._tasks.clear()
        if not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout=max(grace_s, 1.0))
            except Exception:
                await self.nc.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> bool:
    """Poll an async predicate until true or timeout (tests and start-up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return await predicate()
