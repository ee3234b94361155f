"""gRPC Selector: the internal API over the miner registry and pool selection (eq 2)."""

from __future__ import annotations

import random

from gradients.runtime import InvalidArgument
from gradients.task_types import category_of
from gradients.v1 import common_pb2 as pb
from gradients.v1 import selector_pb2 as sel_pb
from gradients.v1 import selector_pb2_grpc
from services.selector.components import SelectorContext
from services.selector.logic import select_pool
from services.selector.rounds import round_rng


class SelectorServicer(selector_pb2_grpc.SelectorServicer):
    def __init__(self, ctx: SelectorContext):
        self.ctx = ctx
        self.sel = ctx.components

    async def ListMiners(self, request: sel_pb.ListMinersRequest, context) -> sel_pb.ListMinersResponse:
        miners = await self.sel.registry.miners(self.sel.policy.uid_of)
        return sel_pb.ListMinersResponse(
            miners=[m.to_proto() for m in miners if m.connected or not request.connected_only]
        )

    async def SelectPool(self, request: sel_pb.SelectPoolRequest, context) -> sel_pb.SelectPoolResponse:
        """The pool eq 2 would draw now from the connected miners (nothing is offered).

        seed 0 = the seed the offer round of attempt 0 uses for this task id.
        """
        if request.type == pb.TASK_TYPE_UNSPECIFIED or request.type not in pb.TaskType.values():
            raise InvalidArgument("type", "must be a task type")
        if request.pool_size < 0:
            raise InvalidArgument("pool_size", "must be >= 0 (0 = the configured range)")
        rng = random.Random(request.seed) if request.seed else round_rng(request.task_id, 0)
        standings = await self.sel.registry.connected_standings(self.sel.policy.uid_of)
        excluded = set(request.exclude)
        available = sum(1 for m in standings if m.hotkey not in excluded)
        size = request.pool_size or self.sel.settings.pool_sizes().pool_size_for(
            category_of(request.type), available, rng
        )
        pool = select_pool(standings, size, rng, exclude=excluded, tie_break_salt=request.task_id or None)
        return sel_pb.SelectPoolResponse(offer_order=[m.hotkey for m in pool])
