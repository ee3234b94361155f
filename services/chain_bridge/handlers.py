"""Bus consumers of chain_bridge: `gradients.scores.updated` → pending weights."""

from __future__ import annotations

import logging

from gradients.runtime import Consumer, Delivery, events
from gradients.v1 import events_pb2 as ev
from services.chain_bridge.components import ChainBridge, ChainBridgeContext

log = logging.getLogger(__name__)
DURABLE = "chain_bridge-scores"


class ScoresUpdatedHandler:
    def __init__(self, bridge: ChainBridge):
        self.bridge = bridge

    async def handle(self, event: ev.ScoresUpdated, delivery: Delivery) -> None:
        # Persist first (the ack follows this return), then let the setter loop do the slow part.
        if await self.bridge.state.offer(event, delivery.headers.get("traceparent", "")):
            self.bridge.setter.wake()
        else:
            log.info("scores %s are older than the pending or last set weights; ignored", event.digest[:16])


def consumers(ctx: ChainBridgeContext) -> list[Consumer]:
    return [Consumer(DURABLE, events.SCORES_UPDATED, ScoresUpdatedHandler(ctx.components).handle)]
