"""Bus consumers of dataset_prep."""

from __future__ import annotations

from gradients.runtime import Consumer, ServiceContext


def consumers(ctx: ServiceContext) -> list[Consumer]:
    return []
