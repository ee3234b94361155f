"""gRPC Scorer: the leaderboard, one task's result, and why a miner has its score.

Everything answers as of the last live computation (the "now" and digest the last
ScoresUpdated carried), so the leaderboard, the explanations and the weights agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradients.runtime import InvalidArgument, NotFound
from gradients.v1 import scorer_pb2 as sc
from gradients.v1 import scorer_pb2_grpc
from services.scorer.keeper import ScoreKeeper
from services.scorer.logic import build_score_table, explain_miner

if TYPE_CHECKING:
    from services.scorer.service import ScorerContext


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, ctx: ScorerContext):
        self.ctx = ctx
        self.keeper: ScoreKeeper = ctx.components.keeper
        self.repo = self.keeper.repo
        self.config = self.keeper.config

    async def GetLeaderboard(self, request: sc.GetLeaderboardRequest, context) -> sc.Leaderboard:
        if request.limit < 0:
            raise InvalidArgument("limit", "must be >= 0 (0 = every miner)")
        latest = await self.repo.latest()
        if latest is None:
            return sc.Leaderboard(scoring_config_version=self.config.version)
        computation, update = latest
        entries = list(update.scores)  # stored best first
        if request.limit:
            entries = entries[: request.limit]
        return sc.Leaderboard(entries=entries, digest=update.digest, scoring_config_version=computation.config_version)

    async def GetTaskResult(self, request: sc.GetTaskResultRequest, context) -> sc.TaskResult:
        task_id = request.task_id.strip()
        if not task_id:
            raise InvalidArgument("task_id", "is required")
        result = await self.repo.result(task_id)
        if result is None:
            raise NotFound(
                f"task {task_id} has no score: it is not evaluated yet, its evaluation failed, or the id is unknown"
            )
        return result

    async def ExplainMinerScore(self, request: sc.ExplainMinerScoreRequest, context) -> sc.MinerScoreExplanation:
        hotkey = request.miner_hotkey.strip()
        if not hotkey:
            raise InvalidArgument("miner_hotkey", "is required")
        latest, records = await self.repo.latest_with_records()
        if latest is None:
            raise NotFound("no scores yet: no task has been scored")
        computation, _ = latest
        try:
            explanation = explain_miner(build_score_table(records), hotkey, computation.now, self.config)
        except KeyError as exc:
            raise NotFound(f"{exc.args[0]} (as of the last computation)") from None
        return sc.MinerScoreExplanation(
            miner_hotkey=hotkey,
            windows=[
                sc.WindowContribution(
                    window=w.window,
                    weight=w.weight,
                    raw_sum=w.raw_sum,
                    normalised=w.normalised,
                    tasks=[sc.TaskContribution(task_id=t, adjusted=a) for t, a in w.tasks],
                )
                for w in explanation.windows
            ],
            temporal_score=explanation.temporal,
            final_score=explanation.final,
        )
