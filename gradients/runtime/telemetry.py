"""OpenTelemetry set-up and JSON logging shared by every service.

Traces: one global SDK TracerProvider per process, resource `service.name`; an OTLP/gRPC
exporter only when OTEL_EXPORTER_OTLP_ENDPOINT is set (nothing is exported otherwise).
Metrics (metrics.py) follow the traces: with an endpoint, `install_tracing` also installs the
OTLP metric exporter, with the same resource; `shutdown_tracing` flushes both.
Tests may pass extra span processors (an in-memory exporter). W3C trace context crosses
NATS in message headers (see bus.py) and gRPC through the instrumentation interceptors.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider: TracerProvider | None = None


def install_tracing(
    service_name: str,
    otlp_endpoint: str | None = None,
    extra_processors: Iterable[SpanProcessor] = (),
) -> TracerProvider:
    """Install (once per process) the tracer provider; later calls add processors only."""
    global _provider
    if _provider is None:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            _provider = current  # installed by a test harness or another service in-process
        else:
            _provider = TracerProvider(resource=Resource.create({
                "service.name": service_name,
                # Tells replicas apart (scaled eval workers): Prometheus's `instance` label.
                "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            }))
            trace.set_tracer_provider(_provider)
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
            from gradients.runtime import metrics  # late import: no cycle with the runtime package

            metrics.install_metrics(service_name, otlp_endpoint, resource=_provider.resource)
    for processor in extra_processors:
        _provider.add_span_processor(processor)
    return _provider


def shutdown_tracing() -> None:
    """Export what is buffered: spans, and metrics recorded since the last export."""
    if _provider is not None:
        _provider.force_flush(5_000)
    from gradients.runtime import metrics

    metrics.flush_metrics()


def tracer(name: str = "gradients") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Write the current W3C trace context (traceparent, tracestate) into headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: dict[str, str] | None):
    return propagate.extract(headers or {})


def grpc_server_interceptors() -> list:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def grpc_client_interceptors() -> list:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


# ---- logging ----------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current trace and span ids when inside a span."""

    CONTEXT_FIELDS = ("task_id", "miner_hotkey", "subject", "durable")

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for field in self.CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                out[field] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
