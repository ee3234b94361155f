"""Metrics: consumer lag read from a real JetStream, and the OTLP export path a service uses
(telemetry.install_tracing with an endpoint → metrics to the same collector)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otlp_receiver import OtlpReceiver

from gradients.runtime import Consumer, EventBus, events, metrics
from gradients.runtime.bus import wait_for
from gradients.v1 import events_pb2 as ev


def gauge_values(reader: InMemoryMetricReader, name: str) -> dict[tuple, float]:
    data = reader.get_metrics_data()
    out = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        out[tuple(sorted(point.attributes.items()))] = point.value
    return out


@pytest.mark.timeout(60)
async def test_consumer_lag_counts_undelivered_and_unacked_messages(nats_server):
    reader = InMemoryMetricReader()
    instruments = metrics.Instruments(MeterProvider(metric_readers=[reader]).get_meter("test"))
    bus = await EventBus.connect(nats_server.url, "lag-test", ack_wait_s=30)
    release = asyncio.Event()
    handled: list[str] = []

    async def slow(event, delivery) -> None:
        handled.append(delivery.msg_id)
        await release.wait()

    consumer = Consumer("lag-probe", events.TASK_PROGRESS, slow)
    try:
        for i in range(3):
            await bus.publish(events.TASK_PROGRESS, ev.TaskProgress(task_id=f"t{i}"), msg_id=f"progress:{i}")
        await bus.start([consumer])

        async def first_taken() -> bool:
            return len(handled) == 1

        assert await wait_for(first_taken, 10)

        # By name (every stream is searched) and by Consumer (its subject names the stream).
        lags = await metrics.report_consumer_lag(bus, ["lag-probe", "no-such-durable"], instruments)
        assert set(lags) == {"lag-probe"}  # an unknown durable is left out, not reported as 0
        assert (lags["lag-probe"].pending, lags["lag-probe"].ack_pending) == (2, 1)
        assert lags["lag-probe"].stream == events.DOMAIN_STREAM.name
        key = (("durable", "lag-probe"), ("stream", "GRADIENTS"))
        assert gauge_values(reader, "gradients.bus.consumer.lag") == {key: 2}
        assert gauge_values(reader, "gradients.bus.consumer.ack_pending") == {key: 1}

        release.set()

        async def drained() -> bool:
            lag = (await metrics.read_consumer_lag(bus, [consumer]))["lag-probe"]
            return (lag.pending, lag.ack_pending) == (0, 0)

        assert await wait_for(drained, 10)
        reporter = metrics.ConsumerLagReporter(bus, [consumer], interval_s=0.05, instruments=instruments)
        loop = asyncio.create_task(reporter.run())

        async def reported_zero() -> bool:
            return gauge_values(reader, "gradients.bus.consumer.lag") == {key: 0}

        assert await wait_for(reported_zero, 5)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    finally:
        release.set()
        await bus.stop(1)


# Runs in its own process: the global MeterProvider can be installed once per process.
EMITTER = textwrap.dedent("""
    import sys
    from gradients.runtime import metrics, telemetry

    telemetry.install_tracing("metrics-probe", sys.argv[1])    # what ServiceHost.start does
    metrics.offers.add(1, {"outcome": "accepted"})
    metrics.offers.add(2, {"outcome": "declined"})
    metrics.auth_failures.add(1, {"reason": "bad_signature"})
    metrics.evaluation_seconds.record(42.0, {"task_type": "INSTRUCT_TEXT"})
    metrics.evaluation_seconds.record(0.5, {"task_type": "INSTRUCT_TEXT"})
    metrics.tasks_by_state.set({"TRAINING": 2, "PENDING": 1})
    metrics.tasks_by_state.set({"TRAINING": 3})
    telemetry.shutdown_tracing()                                 # what ServiceHost.stop does
""")


@pytest.mark.timeout(60)
async def test_instruments_reach_an_otlp_collector():
    async with OtlpReceiver() as receiver:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            EMITTER,
            receiver.endpoint,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 40)
        assert proc.returncode == 0, out.decode()
        names = {"gradients.offers", "gradients.auth.failures", "gradients.evaluation.duration", "gradients.tasks"}
        points = await receiver.wait_for_points(lambda pts: names <= {p.metric for p in pts}, timeout=10)

    assert {p.service for p in points} == {"metrics-probe"}
    by = {(p.metric, tuple(sorted(p.attributes.items()))): p for p in points}
    assert by[("gradients.offers", (("outcome", "accepted"),))].value == 1
    assert by[("gradients.offers", (("outcome", "declined"),))].value == 2
    assert by[("gradients.auth.failures", (("reason", "bad_signature"),))].value == 1
    evaluation = by[("gradients.evaluation.duration", (("task_type", "INSTRUCT_TEXT"),))]
    assert evaluation.unit == "s" and evaluation.count == 2 and evaluation.sum == 42.5
    assert evaluation.bounds == metrics.EVALUATION_BUCKETS_S
    # 0.5 s in (-inf, 1], 42 s in (30, 60]
    assert evaluation.bucket_counts[0] == 1 and evaluation.bucket_counts[metrics.EVALUATION_BUCKETS_S.index(60)] == 1
    assert by[("gradients.tasks", (("state", "TRAINING"),))].value == 3
    assert by[("gradients.tasks", (("state", "PENDING"),))].value == 0  # left out of the last set → 0
