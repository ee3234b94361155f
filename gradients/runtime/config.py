"""Typed configuration from environment variables.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`:
the environment variable, a default and a one-line doc. `load_settings(cls)` reads and
validates them all and raises one `ConfigError` naming every bad or missing variable, so
a service stops at start with a message an operator can act on. `settings_reference()`
renders the same declarations as the README's configuration table, so docs and code
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from gradients.runtime.events import DAY_S, DEAD_LETTER_STREAM, DOMAIN_STREAM, JOBS_STREAM, StreamLimits

T = TypeVar("T")
_REQUIRED = object()


class ConfigError(ValueError):
    """One or more settings are missing or invalid; the message names each variable."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def setting(
    env: str,
    default: Any = _REQUIRED,
    doc: str = "",
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare a field read from `env`. `check(value)` returns an error text or None."""
    meta = {"env": env, "doc": doc, "check": check}
    if default is _REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=cast(Callable[[], Any], lambda d=default: type(d)(d)), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---- reusable checks ---------------------------------------------------------------


def port_check(value: int | None) -> str | None:
    if value is not None and not 0 <= value <= 65535:
        return "must be a TCP port between 0 and 65535"
    return None


def positive(value: float | int) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float | int) -> str | None:
    return None if value >= 0 else "must be >= 0"


def url_scheme(*schemes: str) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        if value and not any(value.startswith(s + "://") for s in schemes):
            return f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
        return None

    return check


def one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


# ---- parsing -------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse(raw: str, tp: Any) -> Any:
    tp, optional = _unwrap_optional(tp)
    if optional and raw.strip() == "":
        return None
    if tp is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected a boolean (true/false, 1/0, yes/no)")
    if tp is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
    if tp is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    if tp is Path:
        return Path(raw)
    if typing.get_origin(tp) is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_parse(p, item) for p in raw.split(",") if p.strip())
    return raw


def load_settings(cls: type[T], env: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build `cls` from the environment; raise ConfigError naming every bad variable."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cast(Any, cls)):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        name = f.metadata.get("env")
        if name is None:
            continue
        raw = env.get(name)
        if raw is None or (raw == "" and f.default is not dataclasses.MISSING):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{name} is required ({f.metadata.get('doc') or f.name})")
            continue
        try:
            values[f.name] = _parse(raw, hints[f.name])
        except ValueError as exc:
            problems.append(f"{name}={raw!r}: {exc}")
    for f in dataclasses.fields(cast(Any, cls)):
        check = f.metadata.get("check")
        if check is None or f.name in overrides:
            continue
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            continue
        err = check(value)
        if err:
            problems.append(f"{f.metadata['env']}={value!r}: {err}")
    if not problems:
        return cls(**values)
    raise ConfigError(problems)


REQUIRED = object()  # the default of a setting that has none: the operator must set it


def settings_fields(*classes: type) -> list[tuple[str, object, str]]:
    """(variable, default value or REQUIRED, description) of every setting of the classes."""
    rows = []
    for cls in classes:
        for f in dataclasses.fields(cast(Any, cls)):
            if "env" not in f.metadata:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = REQUIRED
            rows.append((f.metadata["env"], default, f.metadata.get("doc", "")))
    return rows


def settings_reference(*classes: type) -> list[tuple[str, str, str]]:
    """(variable, default, description) rows for documentation."""
    return [
        (env, "(required)" if default is REQUIRED else "" if default is None else str(default), doc)
        for env, default, doc in settings_fields(*classes)
    ]


# ---- the settings every service shares ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    """Settings every service reads. Service-specific settings live beside each service."""

    nats_url: str = setting(
        "GRADIENTS_NATS_URL",
        "nats://127.0.0.1:4222",
        "NATS server URL(s), comma-separated for a cluster",
        check=url_scheme("nats", "tls"),
    )
    redis_url: str = setting(
        "GRADIENTS_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis URL",
        check=url_scheme("redis", "rediss", "unix"),
    )
    grpc_host: str = setting("GRADIENTS_GRPC_HOST", "0.0.0.0", "address the gRPC server binds")
    grpc_port: int | None = setting(
        "GRADIENTS_GRPC_PORT",
        None,
        "gRPC port (empty = the service's default port)",
        check=port_check,
    )
    data_dir: Path = setting("GRADIENTS_DATA_DIR", Path(".data"), "folder for local state and artifacts")
    artifact_backend: str = setting(
        "GRADIENTS_ARTIFACT_BACKEND",
        "nats",
        "where datasets and submissions are stored: nats (JetStream Object Store) or local",
        check=one_of("nats", "local"),
    )
    namespace: str = setting("GRADIENTS_NAMESPACE", "gm", "prefix of every Redis key")
    stream_replicas: int = setting(
        "GRADIENTS_STREAM_REPLICAS", 1, "JetStream replicas (3 on a NATS cluster)", check=positive
    )
    # Stream limits: applied when a service starts, to a new stream or (updated) an existing one.
    stream_events_max_age_days: float = setting(
        "GRADIENTS_STREAM_EVENTS_MAX_AGE_DAYS",
        DOMAIN_STREAM.limits.max_age_s / DAY_S,
        "days domain events (gradients.>) are kept (0 = no limit)",
        check=non_negative,
    )
    stream_events_max_bytes: int = setting(
        "GRADIENTS_STREAM_EVENTS_MAX_BYTES",
        DOMAIN_STREAM.limits.max_bytes,
        "bytes of domain events kept, oldest dropped first (0 = no limit)",
        check=non_negative,
    )
    stream_jobs_max_age_days: float = setting(
        "GRADIENTS_STREAM_JOBS_MAX_AGE_DAYS",
        JOBS_STREAM.limits.max_age_s / DAY_S,
        "days a queued job (jobs.>) waits before it is dropped (0 = no limit: jobs wait for a worker)",
        check=non_negative,
    )
    stream_jobs_max_bytes: int = setting(
        "GRADIENTS_STREAM_JOBS_MAX_BYTES",
        JOBS_STREAM.limits.max_bytes,
        "bytes of queued jobs; when full new jobs are refused and retried (0 = no limit)",
        check=non_negative,
    )
    stream_dlq_max_age_days: float = setting(
        "GRADIENTS_STREAM_DLQ_MAX_AGE_DAYS",
        DEAD_LETTER_STREAM.limits.max_age_s / DAY_S,
        "days dead letters (dlq.>) are kept (0 = no limit)",
        check=non_negative,
    )
    stream_dlq_max_bytes: int = setting(
        "GRADIENTS_STREAM_DLQ_MAX_BYTES",
        DEAD_LETTER_STREAM.limits.max_bytes,
        "bytes of dead letters kept, oldest dropped first (0 = no limit)",
        check=non_negative,
    )
    bus_max_deliver: int = setting(
        "GRADIENTS_BUS_MAX_DELIVER", 5, "deliveries before a message is dead-lettered", check=positive
    )
    bus_ack_wait_s: float = setting(
        "GRADIENTS_BUS_ACK_WAIT_S", 30.0, "seconds before an unacked message is redelivered", check=positive
    )
    bus_nak_delay_s: float = setting(
        "GRADIENTS_BUS_NAK_DELAY_S", 1.0, "delay before a failed message is redelivered", check=non_negative
    )
    shutdown_grace_s: float = setting(
        "GRADIENTS_SHUTDOWN_GRACE_S", 10.0, "seconds in-flight work may take on SIGTERM", check=non_negative
    )
    log_level: str = setting(
        "GRADIENTS_LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARNING or ERROR",
        check=one_of("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    log_format: str = setting("GRADIENTS_LOG_FORMAT", "json", "json or text", check=one_of("json", "text"))
    otlp_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        "OTLP/gRPC collector endpoint; unset = traces are not exported",
    )
    time_scale: float = setting(
        "GRADIENTS_TIME_SCALE",
        3600.0,
        "real seconds per nominal task hour (3600 in production; small for demos)",
        check=positive,
    )
    task_service_addr: str = setting("GRADIENTS_TASK_SERVICE_ADDR", "127.0.0.1:50051", "task_service gRPC address")
    selector_addr: str = setting("GRADIENTS_SELECTOR_ADDR", "127.0.0.1:50052", "selector gRPC address")
    dataset_prep_addr: str = setting("GRADIENTS_DATASET_PREP_ADDR", "127.0.0.1:50053", "dataset_prep gRPC address")
    eval_worker_addr: str = setting("GRADIENTS_EVAL_WORKER_ADDR", "127.0.0.1:50054", "eval_worker gRPC address")
    scorer_addr: str = setting("GRADIENTS_SCORER_ADDR", "127.0.0.1:50055", "scorer gRPC address")
    chain_bridge_addr: str = setting("GRADIENTS_CHAIN_BRIDGE_ADDR", "127.0.0.1:50056", "chain_bridge gRPC address")

    def stream_limits(self) -> dict[str, StreamLimits]:
        """Each stream's limits by stream name, as these settings give them."""
        return {
            DOMAIN_STREAM.name: StreamLimits(self.stream_events_max_age_days * DAY_S, self.stream_events_max_bytes),
            JOBS_STREAM.name: StreamLimits(self.stream_jobs_max_age_days * DAY_S, self.stream_jobs_max_bytes),
            DEAD_LETTER_STREAM.name: StreamLimits(self.stream_dlq_max_age_days * DAY_S, self.stream_dlq_max_bytes),
        }
