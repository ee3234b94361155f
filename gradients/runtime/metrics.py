"""Metrics through OpenTelemetry: one MeterProvider per process and the mesh's named instruments.

Export: `install_metrics(service, endpoint)` installs an SDK MeterProvider whose OTLP/gRPC exporter
pushes every OTEL_METRIC_EXPORT_INTERVAL ms (SDK default 60000) when an endpoint is given;
`telemetry.install_tracing` calls it with OTEL_EXPORTER_OTLP_ENDPOINT, so every service exports
metrics exactly when it exports traces. Without an endpoint nothing is installed and every
instrument below is a no-op: call them unconditionally. The collector turns them into Prometheus
series (name in brackets; `job` = service.name).

Instruments (attributes are small fixed vocabularies, never ids, so series stay few):

    from gradients.runtime import metrics

    metrics.offers.add(1, {"outcome": "accepted"})          # accepted | declined | timeout
                                                             #   [gradients_offers_total]
    metrics.auth_failures.add(1, {"reason": "bad_signature"})  # e.g. unknown_hotkey, stale_nonce,
                                                             #   replayed_nonce  [gradients_auth_failures_total]
    metrics.evaluation_seconds.record(42.0, {"task_type": "INSTRUCT_TEXT"})   # one per submission
                                                             #   [gradients_evaluation_duration_seconds_*]
    metrics.tasks_by_state.set({"TRAINING": 2, "PENDING": 1})  # current counts; a state left out
                                                             #   reads 0  [gradients_tasks]
    # consumer lag per durable (JetStream num_pending), e.g. as a ServiceSpec background loop:
    reporter = metrics.ConsumerLagReporter(ctx.bus, [c.durable for c in consumers], interval_s=15)
    ...background=lambda ctx: [reporter.run()]               # [gradients_bus_consumer_lag,
                                                             #  gradients_bus_consumer_ack_pending]
    await metrics.report_consumer_lag(ctx.bus, ["eval-workers"])   # one reading, also returned

Gauges are observable: the exporter thread reads the latest values that the event loop stored
with `set`/`report_consumer_lag`, so no callback ever blocks on NATS or Redis.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from gradients.runtime import events

if TYPE_CHECKING:
    from gradients.runtime.bus import Consumer, EventBus

log = logging.getLogger(__name__)

METER_NAME = "gradients"
# Evaluation of one submission takes seconds (tiny models) to hours (large ones, GPU queue).
EVALUATION_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

Attributes = tuple[tuple[str, str], ...]


class LatestValues:
    """Latest value per attribute set of an observable gauge.

    Written from the event loop, read by the metric reader's thread (hence the lock).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Attributes, float] = {}

    def update(self, rows: Mapping[Attributes, float]) -> None:
        """Set these attribute sets; others keep their last value."""
        with self._lock:
            self._values.update(rows)

    def replace(self, rows: Mapping[Attributes, float]) -> None:
        """Set these attribute sets; every other one seen before reads 0 (it went away)."""
        with self._lock:
            self._values = {key: 0 for key in self._values} | dict(rows)

    def snapshot(self) -> dict[Attributes, float]:
        with self._lock:
            return dict(self._values)

    def observe(self, options: CallbackOptions | None = None) -> list[Observation]:
        return [Observation(value, dict(attrs)) for attrs, value in self.snapshot().items()]


class TaskStateCounts(LatestValues):
    """`gradients.tasks{state}`: how many tasks are in each state now."""

    def set(self, counts: Mapping[str, int]) -> None:
        for state, count in counts.items():
            if count < 0:
                raise ValueError(f"tasks_by_state: count of {state} is {count}; counts are >= 0")
        self.replace({(("state", str(state)),): count for state, count in counts.items()})


class Instruments:
    """The named instruments of the mesh, created on one Meter (the global one by default)."""

    def __init__(self, meter: Meter):
        self.offers = meter.create_counter(
            "gradients.offers",
            unit="{offer}",
            description="task offers answered by miners, by outcome (accepted, declined, timeout)",
        )
        self.auth_failures = meter.create_counter(
            "gradients.auth.failures",
            unit="{failure}",
            description="miner requests rejected by authentication, by reason",
        )
        self.evaluation_seconds = meter.create_histogram(
            "gradients.evaluation.duration",
            unit="s",
            description="seconds to evaluate one submission",
            explicit_bucket_boundaries_advisory=EVALUATION_BUCKETS_S,
        )
        self.tasks_by_state = TaskStateCounts()
        meter.create_observable_gauge(
            "gradients.tasks",
            callbacks=[self.tasks_by_state.observe],
            unit="{task}",
            description="tasks per state",
        )
        self.consumer_lag = LatestValues()
        meter.create_observable_gauge(
            "gradients.bus.consumer.lag",
            callbacks=[self.consumer_lag.observe],
            unit="{message}",
            description="messages of a durable consumer not yet delivered (JetStream num_pending)",
        )
        self.consumer_ack_pending = LatestValues()
        meter.create_observable_gauge(
            "gradients.bus.consumer.ack_pending",
            callbacks=[self.consumer_ack_pending.observe],
            unit="{message}",
            description="messages of a durable consumer delivered but not yet acknowledged",
        )


# Module-level instruments on the global (proxy) meter: they bind to the SDK provider when
# install_metrics sets it, and are no-ops until then.
default = Instruments(otel_metrics.get_meter(METER_NAME))
offers = default.offers
auth_failures = default.auth_failures
evaluation_seconds = default.evaluation_seconds
tasks_by_state = default.tasks_by_state


# ---- installation --------------------------------------------------------------------------

_provider: MeterProvider | None = None


def install_metrics(
    service_name: str,
    otlp_endpoint: str | None = None,
    readers: Sequence[MetricReader] = (),
    resource: Resource | None = None,
) -> MeterProvider | None:
    """Install (once per process) a MeterProvider exporting to `otlp_endpoint` and `readers`.

    Returns None, installing nothing, when there is neither an endpoint nor a reader.
    """
    global _provider
    if _provider is not None:
        return _provider
    all_readers = list(readers)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        all_readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=otlp_endpoint, insecure=True)))
    if not all_readers:
        return None
    _provider = MeterProvider(
        metric_readers=all_readers,
        resource=resource or Resource.create({"service.name": service_name}),
    )
    otel_metrics.set_meter_provider(_provider)
    return _provider


def flush_metrics(timeout_ms: int = 5_000) -> None:
    """Export what has been recorded now (at shutdown, so the last interval is not lost)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


# ---- consumer lag ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerLag:
    durable: str
    stream: str
    pending: int  # in the stream, not yet delivered to this durable
    ack_pending: int  # delivered, not yet acknowledged


def _stream_names(durable: str | Consumer) -> list[str]:
    if isinstance(durable, str):
        return [s.name for s in events.STREAMS]
    return [events.stream_for(durable.subject).name]


async def read_consumer_lag(bus: EventBus, durables: Iterable[str | Consumer]) -> dict[str, ConsumerLag]:
    """JetStream consumer info of each durable; a durable not found on any stream is left out.

    A durable is a name (every stream is tried) or a `Consumer` (its subject names the stream).
    """
    from nats.js.errors import NotFoundError

    found: dict[str, ConsumerLag] = {}
    for durable in durables:
        name = durable if isinstance(durable, str) else durable.durable
        for stream in _stream_names(durable):
            try:
                info = await bus.js.consumer_info(stream, name)
            except NotFoundError:
                continue
            found[name] = ConsumerLag(name, stream, int(info.num_pending or 0), int(info.num_ack_pending or 0))
            break
    return found


async def report_consumer_lag(
    bus: EventBus,
    durables: Iterable[str | Consumer],
    instruments: Instruments | None = None,
) -> dict[str, ConsumerLag]:
    """Read each durable's lag and store it in the lag gauges; returns what was read."""
    instruments = instruments or default
    lags = await read_consumer_lag(bus, durables)
    instruments.consumer_lag.update(
        {(("durable", lag.durable), ("stream", lag.stream)): lag.pending for lag in lags.values()}
    )
    instruments.consumer_ack_pending.update(
        {(("durable", lag.durable), ("stream", lag.stream)): lag.ack_pending for lag in lags.values()}
    )
    return lags


class ConsumerLagReporter:
    """Reports the lag of `durables` every `interval_s` until cancelled (a background loop)."""

    def __init__(
        self,
        bus: EventBus,
        durables: Iterable[str | Consumer],
        interval_s: float = 15.0,
        instruments: Instruments | None = None,
    ):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.bus = bus
        self.durables = list(durables)
        self.interval_s = interval_s
        self.instruments = instruments or default

    async def run(self) -> None:
        while True:
            try:
                await report_consumer_lag(self.bus, self.durables, self.instruments)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS hiccup: the gauge keeps its last value until the next read
                log.warning("consumer lag not read: %s", exc)
            await asyncio.sleep(self.interval_s)
