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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
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
            _provider = TracerProvider(
                resource=Resource.create(
                    {
                        "service.name": service_name,
                        # Tells replicas apart (scaled eval workers): Prometheus's `instance` label.
                        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
                    }
                )
            )
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


def extract_context(headers: dict[str, str] | None) -> Context:
    return propagate.extract(headers or {})


def grpc_server_interceptors() -> list[Any]:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def grpc_client_interceptors() -> list[Any]:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


# ---- what a span or log line is about ------------------------------------------------------

# Conventional attribute names for the things an operator searches traces by.
ABOUT_ATTRIBUTES = {"task_id": "task.id", "task_type": "task.type", "miner_hotkey": "miner.hotkey"}
_about: ContextVar[dict[str, str]] = ContextVar("gradients_about", default={})  # noqa: B039  (never mutated: set() always stores a new dict)


def names_in(message: Any) -> dict[str, str]:
    """task_id / task_type / miner_hotkey named by a request or event, wherever they sit in it
    (top level, `.task`, `.submission`); empty strings are left out."""
    out: dict[str, str] = {}
    if message is None or not hasattr(message, "DESCRIPTOR"):
        return out
    fields = message.DESCRIPTOR.fields_by_name
    for nested in ("task", "submission"):
        if nested in fields and message.HasField(nested):
            out.update(names_in(getattr(message, nested)))
    if "task_id" in fields and message.task_id:
        out["task_id"] = message.task_id
    if "miner_hotkey" in fields and message.miner_hotkey:
        out["miner_hotkey"] = message.miner_hotkey
    if "type" in fields and fields["type"].enum_type is not None and fields["type"].enum_type.name == "TaskType":
        if message.type:
            value = fields["type"].enum_type.values_by_number.get(message.type)  # open enum: may be unknown
            out["task_type"] = value.name if value is not None else str(message.type)
    return out


def annotate(**names: str) -> None:
    """Name what the current work is about: as span attributes (task.id, task.type,
    miner.hotkey) on the current span, and on every log line of the current asyncio task from
    now on. Use `about()` where the same task goes on to unrelated work."""
    names = {k: v for k, v in names.items() if v}
    if not names:
        return
    span = trace.get_current_span()
    for key, value in names.items():
        span.set_attribute(ABOUT_ATTRIBUTES.get(key, key), value)
    _about.set({**_about.get(), **names})


@contextmanager
def about(**names: str) -> Iterator[None]:
    """`annotate` for the duration of a block only."""
    token = _about.set(dict(_about.get()))
    try:
        annotate(**names)
        yield
    finally:
        _about.reset(token)


def current_about() -> dict[str, str]:
    return dict(_about.get())


# ---- logging ----------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current trace and span ids when inside a span."""

    CONTEXT_FIELDS = ("task_id", "task_type", "miner_hotkey", "subject", "durable")

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
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
        for field, value in _about.get().items():
            out.setdefault(field, value)
        for field in self.CONTEXT_FIELDS:
            extra = getattr(record, field, None)
            if extra is not None:
                out[field] = extra  # an explicit `extra=` wins over the bound names
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
