"""Bus consumers of chain_bridge."""

from __future__ import annotations

from gradients.runtime import Consumer, ServiceContext


def consumers(ctx: ServiceContext) -> list[Consumer]:
    return []
