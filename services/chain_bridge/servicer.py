"""gRPC ChainBridge: the last weights set, and where the bridge stands with the chain."""

from __future__ import annotations

from gradients.runtime import NotFound
from gradients.v1 import chain_bridge_pb2 as cb
from gradients.v1 import chain_bridge_pb2_grpc
from gradients.v1 import events_pb2 as ev
from services.chain_bridge.components import ChainBridgeContext


class ChainBridgeServicer(chain_bridge_pb2_grpc.ChainBridgeServicer):
    def __init__(self, ctx: ChainBridgeContext):
        self.ctx = ctx
        self.bridge = ctx.components

    async def GetLastWeights(self, request: cb.GetLastWeightsRequest, context) -> ev.WeightsSet:
        last = await self.bridge.state.last()
        if last is None:
            pending = await self.bridge.state.pending()
            raise NotFound("no weights have been set yet" + (" (a vector is pending)" if pending else ""))
        return last

    async def GetChainStatus(self, request: cb.GetChainStatusRequest, context) -> cb.ChainStatus:
        status = self.bridge.setter.status
        last = await self.bridge.state.last()
        pending = await self.bridge.state.pending()
        return cb.ChainStatus(
            backend=self.bridge.backend.name,
            # Not yet tried: reachable as far as we know only when nothing is waiting.
            reachable=status.reachable if status.reachable is not None else pending is None,
            pending=0 if pending is None else 1,
            last_sequence=last.sequence if last else 0,
            last_error=status.last_error,
        )
