"""Wiring of chain_bridge: its gRPC API, consumer, setter loop and settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gradients.runtime import GrpcService, ServiceContext, ServiceSpec
from gradients.runtime.outbox import Outbox
from gradients.v1 import chain_bridge_pb2_grpc
from services.chain_bridge import handlers
from services.chain_bridge.backends import WeightsBackend, make_backend
from services.chain_bridge.components import ChainBridge
from services.chain_bridge.servicer import ChainBridgeServicer
from services.chain_bridge.setter import SetterOptions, WeightSetter
from services.chain_bridge.settings import ChainBridgeSettings
from services.chain_bridge.state import WeightsState

log = logging.getLogger(__name__)
OUTBOX_FLUSH_S = 5.0

BackendFactory = Callable[[ServiceContext], WeightsBackend]


def default_backend(ctx: ServiceContext) -> WeightsBackend:
    return make_backend(ctx.settings, ctx.store, ctx.mesh.data_dir)


async def build(ctx: ServiceContext, backend_factory: BackendFactory = default_backend) -> None:
    settings: ChainBridgeSettings = ctx.settings
    backend = backend_factory(ctx)
    await backend.start()
    outbox = Outbox(ctx.store, ctx.bus, "chain_bridge")
    state = WeightsState(ctx.store)
    options = SetterOptions(
        version_key=settings.version_key, retry_initial_s=settings.retry_initial_s, retry_max_s=settings.retry_max_s,
        idle_check_s=settings.idle_check_s, lease_s=settings.lease_s,
    )
    ctx.state["chain_bridge"] = ChainBridge(backend, state, WeightSetter(ctx.store, backend, state, outbox, options), outbox)
    await outbox.flush()  # events a crashed predecessor stored but did not publish


async def flush_outbox_forever(ctx: ServiceContext) -> None:
    bridge: ChainBridge = ctx.state["chain_bridge"]
    while True:
        await asyncio.sleep(OUTBOX_FLUSH_S)
        if asyncio.current_task().cancelling():  # see WeightSetter.run
            raise asyncio.CancelledError
        try:
            await bridge.outbox.flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("outbox flush failed (will retry): %s", exc)


def background(ctx: ServiceContext) -> list[Awaitable[None]]:
    bridge: ChainBridge = ctx.state["chain_bridge"]
    return [bridge.setter.run(), flush_outbox_forever(ctx)]


async def stop(ctx: ServiceContext) -> None:
    bridge: ChainBridge | None = ctx.state.get("chain_bridge")
    if bridge is not None:
        await bridge.backend.close()


SPEC = ServiceSpec(
    name="chain_bridge",
    default_port=50056,
    grpc_services=(GrpcService("gradients.v1.ChainBridge", chain_bridge_pb2_grpc.add_ChainBridgeServicer_to_server, ChainBridgeServicer),),
    consumers=handlers.consumers,
    background=background,
    settings_type=ChainBridgeSettings,
    on_start=build,
    on_stop=stop,
)
