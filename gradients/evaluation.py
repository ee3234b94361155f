"""The evaluation weights a task carries (Task.evaluation), written in one place (§3.4).

task_service stamps them on every task it creates; eval_worker falls back to them for a task
stored without them; the scorer's ScoringConfig pins the same ω (and δ) so one config version
names the rule that produced a set of weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradients.v1 import common_pb2 as pb

TEXT_TEST_WEIGHT = 0.7  # ω: L_weighted = ω·L_test + (1−ω)·L_synth for text tasks
IMAGE_TEST_WEIGHT = 0.25  # δ: L_weighted = δ·L_text + (1−δ)·L_no-text for image tasks
DPO_BETA = 0.1  # β of the DPO loss the evaluator reports


@dataclass(frozen=True)
class Criteria:
    test_weight: float
    dpo_beta: float


def default_criteria(task_type: int) -> Criteria:
    """The weights of a task of this proto TaskType when it names none."""
    return Criteria(
        test_weight=IMAGE_TEST_WEIGHT if task_type == pb.IMAGE else TEXT_TEST_WEIGHT,
        dpo_beta=DPO_BETA,
    )
