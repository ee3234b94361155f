"""An OTLP/gRPC receiver for tests: what a collector would get, kept in memory.

    async with OtlpReceiver() as receiver:          # grpc.aio server on 127.0.0.1:<free port>
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ... run services ...
        spans = await receiver.wait_for_spans(lambda spans: any(s.service == "scorer" for s in spans))
        traces = spans_by_trace(receiver.spans)     # {trace_id: [ReceivedSpan, ...]}

Implements opentelemetry.proto.collector.trace.v1.TraceService/Export and
...metrics.v1.MetricsService/Export with the `opentelemetry-proto` stubs. For a synchronous test
(e.g. one driving `gradients up` through subprocess), `ThreadedOtlpReceiver` runs the same server
on its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def any_value(value: AnyValue):
    """An OTLP AnyValue as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Iterable[KeyValue]) -> dict:
    return {kv.key: any_value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # resource attribute service.name
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: dict = field(hash=False)
    resource: dict = field(hash=False)


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of a metric: sums and gauges give `value`, histograms `count`/`sum`."""

    service: str
    metric: str
    unit: str
    attributes: dict = field(hash=False)
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: tuple[int, ...] = ()
    bounds: tuple[float, ...] = ()


def spans_by_trace(spans: Iterable[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    """Spans grouped by trace id, each group in arrival order."""
    grouped: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        grouped[span.trace_id].append(span)
    return dict(grouped)


def services_in_trace(spans: Iterable[ReceivedSpan]) -> set[str]:
    return {span.service for span in spans}


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        service=service,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes=attributes(span.attributes),
                        resource=resource,
                    )
                )
    return out


def _points(request: metrics_service_pb2.ExportMetricsServiceRequest) -> list[ReceivedPoint]:
    out = []
    for resource_metrics in request.resource_metrics:
        service = str(attributes(resource_metrics.resource.attributes).get("service.name", ""))
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind in ("sum", "gauge"):
                    for p in getattr(metric, kind).data_points:
                        value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                        out.append(ReceivedPoint(service, metric.name, metric.unit, attributes(p.attributes), value))
                elif kind == "histogram":
                    for p in metric.histogram.data_points:
                        out.append(
                            ReceivedPoint(
                                service,
                                metric.name,
                                metric.unit,
                                attributes(p.attributes),
                                count=p.count,
                                sum=p.sum,
                                bucket_counts=tuple(p.bucket_counts),
                                bounds=tuple(p.explicit_bounds),
                            )
                        )
    return out


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver):
        self.receiver = receiver

    async def Export(self, request, context):
        self.receiver.spans.extend(_spans(request))
        self.receiver._changed()
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver):
        self.receiver = receiver

    async def Export(self, request, context):
        self.receiver.points.extend(_points(request))
        self.receiver._changed()
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """OTLP/gRPC trace and metric receiver on 127.0.0.1 (a free port unless one is given)."""

    def __init__(self, port: int = 0):
        self._requested_port = port
        self.port = 0
        self.spans: list[ReceivedSpan] = []
        self.points: list[ReceivedPoint] = []
        self._server: grpc.aio.Server | None = None
        self._event: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OtlpReceiver:
        self._event = asyncio.Event()
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self._requested_port}")
        if self.port == 0:
            raise OSError(f"OTLP receiver cannot bind 127.0.0.1:{self._requested_port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None

    async def __aenter__(self) -> OtlpReceiver:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _changed(self) -> None:
        if self._event is not None:
            self._event.set()

    async def _wait_for(self, items: Callable[[], list], predicate: Callable[[list], bool], timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            current = list(items())
            if predicate(current):
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"OTLP receiver: {what} not received in {timeout:.0f}s; got {len(current)}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), timeout=min(left, 0.5))
            except TimeoutError:
                pass

    async def wait_for_spans(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0):
        """All spans so far, once `predicate(spans)` holds; TimeoutError otherwise."""
        return await self._wait_for(lambda: self.spans, predicate, timeout, "the expected spans")

    async def wait_for_points(self, predicate: Callable[[list[ReceivedPoint]], bool], timeout: float = 20.0):
        return await self._wait_for(lambda: self.points, predicate, timeout, "the expected metric points")


class ThreadedOtlpReceiver:
    """OtlpReceiver on its own event loop in a daemon thread, for synchronous tests."""

    def __init__(self, port: int = 0):
        self.receiver = OtlpReceiver(port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-receiver", daemon=True)

    def __enter__(self) -> ThreadedOtlpReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def endpoint(self) -> str:
        return self.receiver.endpoint

    @property
    def spans(self) -> list[ReceivedSpan]:
        return list(self.receiver.spans)

    @property
    def points(self) -> list[ReceivedPoint]:
        return list(self.receiver.points)

    def wait_for_spans(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0):
        future = asyncio.run_coroutine_threadsafe(self.receiver.wait_for_spans(predicate, timeout), self._loop)
        return future.result(timeout + 5)

    def wait_for_points(self, predicate: Callable[[list[ReceivedPoint]], bool], timeout: float = 20.0):
        future = asyncio.run_coroutine_threadsafe(self.receiver.wait_for_points(predicate, timeout), self._loop)
        return future.result(timeout + 5)
