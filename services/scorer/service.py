"""Wiring of scorer: its gRPC API, consumers, background loop and settings."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from gradients.runtime import GrpcService, ServiceContext, ServiceSpec
from gradients.runtime.loops import every
from gradients.v1 import scorer_pb2_grpc
from services.scorer import handlers
from services.scorer.keeper import ScoreKeeper
from services.scorer.servicer import ScorerServicer
from services.scorer.settings import ScorerSettings


@dataclass
class ScorerComponents:
    keeper: ScoreKeeper


ScorerContext = ServiceContext[ScorerSettings, ScorerComponents]


async def build(ctx: ScorerContext) -> ScorerComponents:
    keeper = ScoreKeeper(ctx.store, ctx.bus)
    await keeper.outbox.flush()  # events a crashed predecessor stored but did not publish
    return ScorerComponents(keeper)


async def refresh(ctx: ScorerContext) -> None:
    """Re-publish S_final as the windows age, and retry unpublished outbox events."""
    keeper, settings = ctx.components.keeper, ctx.settings
    await keeper.outbox.flush()
    if settings.refresh_s > 0:
        await keeper.refresh(settings.refresh_s)


def background(ctx: ScorerContext) -> list[Coroutine[Any, Any, None]]:
    return [every(ctx.settings.tick_s, lambda: refresh(ctx), name="scorer refresh")]


SPEC: ServiceSpec[ScorerSettings, ScorerComponents] = ServiceSpec(
    name="scorer",
    default_port=50055,
    grpc_services=(GrpcService("gradients.v1.Scorer", scorer_pb2_grpc.add_ScorerServicer_to_server, ScorerServicer),),
    consumers=handlers.consumers,
    background=background,
    settings_type=ScorerSettings,
    on_start=build,
)
