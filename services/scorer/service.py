"""Wiring of scorer: its gRPC API, consumers, background loop and settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from gradients.runtime import GrpcService, ServiceContext, ServiceSpec
from gradients.v1 import scorer_pb2_grpc
from services.scorer import handlers
from services.scorer.keeper import ScoreKeeper
from services.scorer.servicer import ScorerServicer
from services.scorer.settings import ScorerSettings

log = logging.getLogger(__name__)


async def build(ctx: ServiceContext) -> None:
    keeper = ScoreKeeper(ctx.store, ctx.bus)
    ctx.state["keeper"] = keeper
    await keeper.outbox.flush()  # events a crashed predecessor stored but did not publish


async def refresh_forever(ctx: ServiceContext) -> None:
    """Re-publish S_final as the windows age, and retry unpublished outbox events."""
    keeper: ScoreKeeper = ctx.state["keeper"]
    settings: ScorerSettings = ctx.settings
    while True:
        await asyncio.sleep(settings.tick_s)
        if asyncio.current_task().cancelling():
            # Python 3.11's wait_for (inside nats-py's publish) can swallow a cancellation that
            # races a completed call; stop anyway.
            raise asyncio.CancelledError
        try:
            await keeper.outbox.flush()
            if settings.refresh_s > 0:
                await keeper.refresh(settings.refresh_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("scorer refresh failed (will retry): %s", exc)


def background(ctx: ServiceContext) -> list[Awaitable[None]]:
    return [refresh_forever(ctx)]


SPEC = ServiceSpec(
    name="scorer",
    default_port=50055,
    grpc_services=(GrpcService("gradients.v1.Scorer", scorer_pb2_grpc.add_ScorerServicer_to_server, ScorerServicer),),
    consumers=handlers.consumers,
    background=background,
    settings_type=ScorerSettings,
    on_start=build,
)
