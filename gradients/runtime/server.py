"""Service start-up shared by all six services.

A service declares a `ServiceSpec` (its gRPC servicers, bus consumers, background loops,
settings type) and its `__main__` calls `run_service(spec)`. Everything else is here:
typed config, logging, tracing, NATS and Redis connections, a `grpc.aio` server with
health (SERVING only while NATS and Redis are up), reflection, uniform error mapping,
and a clean stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import inspect
import logging
import signal
import sys
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import SpanProcessor

from gradients.runtime import telemetry
from gradients.runtime.artifacts import ArtifactStore, open_artifact_store
from gradients.runtime.bus import Consumer, EventBus, is_transient
from gradients.runtime.config import ConfigError, MeshSettings, load_settings
from gradients.runtime.errors import ServiceError
from gradients.runtime.outbox import keep_flushing
from gradients.runtime.store import Store

log = logging.getLogger(__name__)


SettingsT = TypeVar("SettingsT")
ComponentsT = TypeVar("ComponentsT")


@dataclass(frozen=True)
class GrpcService(Generic[SettingsT, ComponentsT]):
    """One gRPC service hosted by a process: its full name, registrar and factory."""

    full_name: str
    register: Callable[[Any, grpc.aio.Server], None]
    factory: Callable[[ServiceContext[SettingsT, ComponentsT]], Any]


@dataclass(frozen=True)
class ServiceSpec(Generic[SettingsT, ComponentsT]):
    """A service: `on_start` builds its long-lived parts (a dataclass, `ComponentsT`) once, and
    the host keeps them on the context as `ctx.components` for servicers, consumers and loops."""

    name: str
    default_port: int
    grpc_services: tuple[GrpcService[SettingsT, ComponentsT], ...] = ()
    consumers: Callable[[ServiceContext[SettingsT, ComponentsT]], list[Consumer]] = lambda ctx: []
    background: Callable[[ServiceContext[SettingsT, ComponentsT]], list[Coroutine[Any, Any, None]]] = lambda ctx: []
    settings_type: type[SettingsT] | None = None
    on_start: Callable[[ServiceContext[SettingsT, ComponentsT]], Awaitable[ComponentsT]] | None = None
    # Called at stop, and after a failed start once on_start has returned.
    on_stop: Callable[[ServiceContext[SettingsT, ComponentsT]], Awaitable[None]] | None = None


@dataclass
class ServiceContext(Generic[SettingsT, ComponentsT]):
    """What handlers and servicers of one service share: its settings, connections and the
    components its `on_start` built."""

    name: str
    mesh: MeshSettings
    settings: SettingsT
    bus: EventBus
    store: Store
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _components: ComponentsT | None = None
    _built: bool = False
    _artifacts: ArtifactStore | None = None

    @property
    def components(self) -> ComponentsT:
        """The service's parts, as its `on_start` returned them."""
        if not self._built:
            raise RuntimeError(f"{self.name}: components are used before on_start built them")
        return cast(ComponentsT, self._components)

    @components.setter
    def components(self, value: ComponentsT) -> None:
        self._components = value
        self._built = True

    @property
    def built(self) -> bool:
        """Whether `components` is set (on_start returned)."""
        return self._built

    @property
    def artifacts(self) -> ArtifactStore:
        """The content-addressed store for datasets and submissions (built on first use)."""
        if self._artifacts is None:
            self._artifacts = open_artifact_store(
                self.mesh.artifact_backend, self.bus.js, self.mesh.data_dir, self.mesh.stream_replicas
            )
        return self._artifacts

    def channel(self, address: str) -> grpc.aio.Channel:
        """A cached, traced client channel to another service."""
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(
                address, interceptors=telemetry.grpc_client_interceptors()
            )
        return self._channels[address]

    async def close_channels(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


# ---- uniform error handling ---------------------------------------------------------


class _Malformed:
    """Stands in for a request that could not be decoded."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            return _Malformed(exc)

    return decode


async def _responses(result: Any) -> AsyncIterator[Any]:
    """The replies of a server-streaming handler, whichever style it is written in: an async
    generator yields them; a coroutine (grpc's own health Watch) sends them with
    `context.write()` itself and yields nothing here."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    else:
        await result


# Long-lived, mostly quiet streams (a miner's offer stream) are kept alive by client pings every
# 20 s (miner_sdk). grpc's server default refuses pings more often than every 5 minutes without
# data and answers the third with GOAWAY "too_many_pings", dropping the stream (and any offer
# sent meanwhile); allow them, and ping idle clients ourselves to notice dead ones.
SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)


def new_grpc_server() -> grpc.aio.Server:
    """A grpc.aio server with the mesh's interceptors (tracing, errors) and keepalive policy."""
    return grpc.aio.server(
        interceptors=[*telemetry.grpc_server_interceptors(), ErrorInterceptor()], options=SERVER_OPTIONS
    )


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type stubs
    """Malformed requests → INVALID_ARGUMENT; ServiceError → its status; bugs → INTERNAL.

    Without this a request that does not decode gets grpc's bare "Exception
    deserializing request!" and a servicer exception a reasonless UNKNOWN.
    """

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        async def check(request: Any, context: Any) -> Any:
            if isinstance(request, _Malformed):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"malformed request for {method}: {type(request.error).__name__}: {request.error}",
                )
            # Each RPC runs in its own asyncio task: what it names stays on its span and log lines.
            telemetry.annotate(**telemetry.names_in(getattr(request, "message", request)))
            return request

        async def checked_stream(request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in request_iterator:
                yield await check(request, context)

        async def failed(exc: Exception, context: Any) -> None:
            if isinstance(exc, ServiceError):
                await context.abort(exc.code, exc.message)
            if isinstance(exc, NotImplementedError):
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
            if is_transient(exc):  # NATS or Redis briefly away: the caller should retry, not give up
                log.warning("%s: backing service unavailable: %s: %s", method, type(exc).__name__, exc)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{method}: temporarily unavailable ({type(exc).__name__}: {exc}); retry",
                )
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}")

        streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
        inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

        async def replies(request: Any, context: Any) -> AsyncGenerator[Any, None]:
            """The handler's replies (one for a unary response), its failures mapped to a status."""
            request = checked_stream(request, context) if streaming_in else await check(request, context)
            try:
                if streaming_out:
                    async for item in _responses(inner(request, context)):
                        yield item
                else:
                    yield await inner(request, context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await failed(exc, context)

        async def reply(request: Any, context: Any) -> Any:
            async with contextlib.aclosing(replies(request, context)) as only:
                return await anext(only)

        make_handler = _METHOD_HANDLERS[(streaming_in, streaming_out)]
        return make_handler(
            replies if streaming_out else reply, _tolerant(handler.request_deserializer), handler.response_serializer
        )


# grpc's constructor of a method handler, by (request streaming, response streaming).
_METHOD_HANDLERS: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


# ---- the running service --------------------------------------------------------------


class ServiceHost:
    """One service, started: used by `run_service` and, in-process, by tests."""

    # Hosts started and not yet stopped in this process (a test harness stops leftovers).
    running: weakref.WeakSet[ServiceHost] = weakref.WeakSet()

    def __init__(
        self,
        spec: ServiceSpec[Any, Any],
        ctx: ServiceContext[Any, Any],
        server: grpc.aio.Server,
        port: int,
        health_servicer: health.aio.HealthServicer,
    ):
        self.spec = spec
        self.ctx = ctx
        self.server = server
        self.port = port
        self.health = health_servicer
        self._background: list[asyncio.Task[Any]] = []
        self._watchdog: asyncio.Task[None] | None = None
        self.serving = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def start(
        cls,
        spec: ServiceSpec[Any, Any],
        env: Mapping[str, str] | None = None,
        span_processors: Iterable[SpanProcessor] = (),
        **mesh_overrides: Any,
    ) -> ServiceHost:
        mesh = load_settings(MeshSettings, env, **mesh_overrides)
        settings = load_settings(spec.settings_type, env) if spec.settings_type else None
        telemetry.install_tracing(spec.name, mesh.otlp_endpoint, span_processors)

        bus = await EventBus.connect(
            mesh.nats_url,
            spec.name,
            max_deliver=mesh.bus_max_deliver,
            ack_wait_s=mesh.bus_ack_wait_s,
            nak_delay_s=mesh.bus_nak_delay_s,
            replicas=mesh.stream_replicas,
            stream_limits=mesh.stream_limits(),
        )
        store = Store.from_url(mesh.redis_url, mesh.namespace)
        if not await store.ping():
            await bus.nc.close()
            raise ConnectionError(f"cannot reach Redis at {mesh.redis_url} (GRADIENTS_REDIS_URL)")
        ctx: ServiceContext[Any, Any] = ServiceContext(spec.name, mesh, settings, bus, store)

        server = new_grpc_server()
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [s.full_name for s in spec.grpc_services]
        try:
            if spec.on_start:
                ctx.components = await spec.on_start(ctx)
            for svc in spec.grpc_services:
                svc.register(svc.factory(ctx), server)
            reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
            port = mesh.grpc_port if mesh.grpc_port is not None else spec.default_port
            bound = server.add_insecure_port(f"{mesh.grpc_host}:{port}")
            if bound == 0:
                raise OSError(f"cannot bind gRPC port {mesh.grpc_host}:{port} (GRADIENTS_GRPC_PORT)")
            await server.start()
        except BaseException:
            # A bad setting found by on_start (ConfigError) or a port in use: nothing may stay
            # open behind the error (NATS, Redis, channels, what on_start built).
            await _close_after_failed_start(spec, ctx, server)
            raise

        host = cls(spec, ctx, server, bound, health_servicer)
        cls.running.add(host)
        consumers = spec.consumers(ctx)
        await bus.start(consumers)
        host._background = [asyncio.create_task(c) for c in spec.background(ctx)]
        host._background.append(asyncio.create_task(keep_flushing(bus), name="outbox-retry"))
        if consumers and mesh.otlp_endpoint:  # lag is only worth reading when it is exported
            from gradients.runtime.metrics import ConsumerLagReporter

            host._background.append(asyncio.create_task(ConsumerLagReporter(bus, consumers).run()))
        await host._update_health()
        host._watchdog = asyncio.create_task(host._watch())
        log.info("%s serving on port %d", spec.name, bound)
        return host

    def _dead_loops(self) -> list[str]:
        """Background loops that ended with an error: the service would look healthy while, say,
        no timer fires any more; report it and stop SERVING so an orchestrator restarts it."""
        dead = []
        for task in self._background:
            if task.done() and not task.cancelled() and task.exception() is not None:
                dead.append(f"{task.get_name()}: {type(task.exception()).__name__}: {task.exception()}")
        return dead

    async def _update_health(self) -> None:
        dead = self._dead_loops()
        if dead and not getattr(self, "_reported_dead", False):
            self._reported_dead = True
            log.error("%s: background loop(s) ended with an error: %s", self.spec.name, "; ".join(dead))
        ok = not dead and self.ctx.bus.connected and await self.ctx.store.ping()
        if ok != self.serving or not hasattr(self, "_health_set"):
            self._health_set = True
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ["", *(s.full_name for s in self.spec.grpc_services)]:
                await self.health.set(name, status)
            if self.serving and not ok:
                log.error("%s NOT_SERVING: nats connected=%s", self.spec.name, self.ctx.bus.connected)
            self.serving = ok

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._update_health()
            except Exception as exc:
                log.warning("health watchdog: %s", exc)

    async def stop(self, grace_s: float | None = None) -> None:
        ServiceHost.running.discard(self)
        grace = self.ctx.mesh.shutdown_grace_s if grace_s is None else grace_s
        if self._watchdog:
            self._watchdog.cancel()
        await self.health.enter_graceful_shutdown()
        await cancel_all(self._background)
        await self.ctx.bus.stop(grace)
        await self.server.stop(grace)
        if self.spec.on_stop:
            await self.spec.on_stop(self.ctx)
        await self.ctx.close_channels()
        await self.ctx.store.close()
        telemetry.shutdown_tracing()


async def _close_after_failed_start(
    spec: ServiceSpec[Any, Any], ctx: ServiceContext[Any, Any], server: grpc.aio.Server
) -> None:
    steps: list[Callable[[], Awaitable[Any]]] = [lambda: server.stop(0)]
    on_stop = spec.on_stop
    if on_stop and (ctx.built or spec.on_start is None):  # on_stop closes what on_start built
        steps.append(lambda: on_stop(ctx))
    steps += [ctx.close_channels, ctx.store.close, ctx.bus.nc.close]
    for step in steps:
        try:
            await step()
        except Exception as exc:  # closing is best effort: the start error is the one to report
            log.debug("%s: cleanup after failed start: %s", spec.name, exc)


async def cancel_all(tasks: list[asyncio.Task[Any]], timeout_s: float = 5.0) -> None:
    """Cancel tasks and wait for them, cancelling again while any is still running: a
    cancellation can be swallowed (a redis or wait_for call completing at that moment)."""
    pending = {t for t in tasks if not t.done()}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending and asyncio.get_running_loop().time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    if pending:
        log.error("background tasks ignored cancellation: %s", [t.get_name() for t in pending])


def run_service(spec: ServiceSpec[Any, Any]) -> None:
    """Entry point of `python -m services.<name>`: run until SIGTERM/SIGINT."""
    try:
        mesh = load_settings(MeshSettings)
        if spec.settings_type:
            load_settings(spec.settings_type)
    except ConfigError as exc:
        print(f"{spec.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    telemetry.configure_logging(spec.name, mesh.log_level, mesh.log_format)
    # A native crash (SIGSEGV, SIGABRT in a C extension) leaves its Python stacks in the log.
    faulthandler.enable(all_threads=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            host = await ServiceHost.start(spec)
        except ConfigError as exc:  # a setting on_start found bad (a wallet, pool sizes): as at load
            log.error("%s failed to start: %s", spec.name, exc)
            print(f"{spec.name}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except (ConnectionError, OSError) as exc:
            log.error("%s failed to start: %s", spec.name, exc)
            raise SystemExit(3) from None
        await stop.wait()
        log.info("%s stopping", spec.name)
        await host.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
