"""Wiring of selector: the Selector API, the miner gateway, consumers, settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc

from gradients.runtime import ConfigError, GrpcService, ServiceSpec
from gradients.runtime.auth import AllowList, MetagraphHotkeys, MinerAuthenticator, RedisNonceStore
from gradients.runtime.outbox import Outbox
from gradients.runtime.server import new_grpc_server
from gradients.v1 import selector_pb2_grpc
from services.selector import gateway, handlers
from services.selector.components import SelectorComponents, SelectorContext
from services.selector.gateway import MinerGatewayServicer
from services.selector.offers import OfferBook
from services.selector.ratelimit import HotkeyRateLimiter
from services.selector.records import GatewayTasks, MinerResults, Submissions
from services.selector.registry import MinerRegistry
from services.selector.rounds import OfferRounds, RoundConfig
from services.selector.servicer import SelectorServicer
from services.selector.settings import SelectorSettings

log = logging.getLogger(__name__)

# Nonces are remembered a little longer than the freshness window they must cover.
NONCE_RETENTION_MARGIN_S = 5.0


def validator_hotkey(settings: SelectorSettings, data_dir: Path) -> str:
    """The ss58 miners sign for: configured, or the validator wallet's hotkey.

    In allowlist (embedded) mode a missing wallet hotkey is created, so `gradients up` works
    out of the box; in metagraph (chain) mode it must exist.
    """
    if settings.validator_hotkey:
        return settings.validator_hotkey
    import bittensor as bt

    path = settings.validator_wallet_path or Path(data_dir) / "wallets"
    wallet = bt.Wallet(name=settings.validator_wallet_name, hotkey=settings.validator_wallet_hotkey, path=str(path))
    try:
        return wallet.hotkeypub.ss58_address
    except FileNotFoundError:
        pass
    try:
        return wallet.hotkey.ss58_address
    except FileNotFoundError:
        if settings.auth_mode != "allowlist":
            raise ConfigError(
                [
                    f"GRADIENTS_SELECTOR_VALIDATOR_HOTKEY is empty and wallet {settings.validator_wallet_name}/"
                    f"{settings.validator_wallet_hotkey} has no hotkey under {path}",
                ]
            ) from None
    wallet.create_new_hotkey(suppress=True)
    log.warning("created validator hotkey %s under %s (embedded mode)", wallet.hotkey.ss58_address, path)
    return wallet.hotkey.ss58_address


async def build(ctx: SelectorContext) -> SelectorComponents:
    settings = ctx.settings
    try:
        pool_sizes = settings.pool_sizes()
    except ValueError as exc:
        raise ConfigError([f"GRADIENTS_SELECTOR_*_POOL_MIN/MAX: {exc}"]) from None
    receiver = validator_hotkey(settings, ctx.mesh.data_dir)
    if settings.auth_mode == "metagraph":
        policy = MetagraphHotkeys(settings.network, settings.netuid)
    else:
        policy = AllowList(settings.allowed_hotkeys)
        if not policy.uids:
            log.warning("GRADIENTS_SELECTOR_ALLOWED_HOTKEYS is empty: no miner can connect")
    nonce_store = RedisNonceStore.from_url(
        ctx.mesh.redis_url,
        ctx.mesh.namespace,
        retention=settings.auth_max_age_s + settings.auth_allowed_skew_s + NONCE_RETENTION_MARGIN_S,
    )
    registry = MinerRegistry(ctx.store, settings.session_ttl_s)
    book = OfferBook(ctx.store, ctx.bus.nc)
    outbox = Outbox(ctx.store, ctx.bus, "selector")  # retried by the host's keep_flushing
    rounds = OfferRounds(
        ctx.store,
        ctx.bus,
        registry,
        book,
        outbox,
        RoundConfig(settings.offer_timeout_s, pool_sizes, ctx.mesh.time_scale),
        policy.uid_of,
    )
    sel = SelectorComponents(
        settings=settings,
        receiver_ss58=receiver,
        policy=policy,
        nonce_store=nonce_store,
        auth=MinerAuthenticator(receiver, nonce_store, policy, settings.auth_max_age_s, settings.auth_allowed_skew_s),
        registry=registry,
        book=book,
        rounds=rounds,
        tasks=GatewayTasks(ctx.store),
        submissions=Submissions(ctx.store, outbox),
        results=MinerResults(ctx.store, settings.results_kept),
        outbox=outbox,
        limiter=HotkeyRateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
    )
    if settings.gateway_port is not None:
        server = new_grpc_server()
        bound = server.add_insecure_port(f"{ctx.mesh.grpc_host}:{settings.gateway_port}")
        if bound == 0:
            raise OSError(
                f"cannot bind the miner gateway port {ctx.mesh.grpc_host}:{settings.gateway_port} "
                "(GRADIENTS_SELECTOR_GATEWAY_PORT)"
            )
        sel.gateway_server, sel.gateway_port = server, bound
    await outbox.flush()  # events a crashed predecessor stored but did not publish
    log.info("miner gateway: validator hotkey %s, auth mode %s", receiver, settings.auth_mode)
    return sel


async def run_gateway_server(ctx: SelectorContext, server: grpc.aio.Server) -> None:
    sel = ctx.components
    await server.start()
    log.info("miner gateway serving on port %d", sel.gateway_port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop(ctx.mesh.shutdown_grace_s)


def background(ctx: SelectorContext) -> list[Coroutine[Any, Any, None]]:
    sel = ctx.components
    loops: list[Coroutine[Any, Any, None]] = []
    if sel.gateway_server is not None:
        loops.append(run_gateway_server(ctx, sel.gateway_server))
    if isinstance(sel.policy, MetagraphHotkeys):
        loops.append(sel.policy.refresh_forever(sel.settings.metagraph_refresh_s))
    return loops


async def stop(ctx: SelectorContext) -> None:
    ctx.components.nonce_store.close()


SPEC: ServiceSpec[SelectorSettings, SelectorComponents] = ServiceSpec(
    name="selector",
    default_port=50052,
    grpc_services=(
        GrpcService("gradients.v1.Selector", selector_pb2_grpc.add_SelectorServicer_to_server, SelectorServicer),
        GrpcService("gradients.v1.MinerGateway", gateway.register, MinerGatewayServicer),
    ),
    consumers=handlers.consumers,
    background=background,
    settings_type=SelectorSettings,
    on_start=build,
    on_stop=stop,
)
