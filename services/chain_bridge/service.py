"""Wiring of chain_bridge: its gRPC API, consumer, setter loop and settings."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from gradients.runtime import GrpcService, ServiceSpec
from gradients.runtime.outbox import Outbox
from gradients.v1 import chain_bridge_pb2_grpc
from services.chain_bridge import handlers
from services.chain_bridge.backends import WeightsBackend, make_backend
from services.chain_bridge.components import ChainBridge, ChainBridgeContext
from services.chain_bridge.servicer import ChainBridgeServicer
from services.chain_bridge.setter import SetterOptions, WeightSetter
from services.chain_bridge.settings import ChainBridgeSettings
from services.chain_bridge.state import WeightsState

BackendFactory = Callable[[ChainBridgeContext], WeightsBackend]


def default_backend(ctx: ChainBridgeContext) -> WeightsBackend:
    return make_backend(ctx.settings, ctx.store, ctx.mesh.data_dir)


async def build(ctx: ChainBridgeContext, backend_factory: BackendFactory = default_backend) -> ChainBridge:
    settings = ctx.settings
    backend = backend_factory(ctx)
    await backend.start()
    outbox = Outbox(ctx.store, ctx.bus, "chain_bridge")  # retried by the host's keep_flushing
    state = WeightsState(ctx.store)
    options = SetterOptions(
        version_key=settings.version_key,
        retry_initial_s=settings.retry_initial_s,
        retry_max_s=settings.retry_max_s,
        idle_check_s=settings.idle_check_s,
        lease_s=settings.lease_s,
    )
    bridge = ChainBridge(backend, state, WeightSetter(ctx.store, backend, state, outbox, options), outbox)
    try:
        await outbox.flush()  # events a crashed predecessor stored but did not publish
    except BaseException:
        await backend.close()  # no component is handed over: nothing else would close it
        raise
    return bridge


def background(ctx: ChainBridgeContext) -> list[Coroutine[Any, Any, None]]:
    return [ctx.components.setter.run()]


async def stop(ctx: ChainBridgeContext) -> None:
    await ctx.components.backend.close()


SPEC: ServiceSpec[ChainBridgeSettings, ChainBridge] = ServiceSpec(
    name="chain_bridge",
    default_port=50056,
    grpc_services=(
        GrpcService(
            "gradients.v1.ChainBridge", chain_bridge_pb2_grpc.add_ChainBridgeServicer_to_server, ChainBridgeServicer
        ),
    ),
    consumers=handlers.consumers,
    background=background,
    settings_type=ChainBridgeSettings,
    on_start=build,
    on_stop=stop,
)
