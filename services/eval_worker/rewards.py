"""Evaluate a task's reward functions on completions, every one of them in the sandbox.

Built-ins (reward_library.py) and user code both run in `sandbox.run_sandboxed`: the built-ins
take task-supplied parameters (e.g. a regex), so they get the same limits. User code follows
the TRL convention `fn(completions, prompts=..., **columns) -> list[float]`, where columns are
the dataset's other columns, one value per completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.eval_worker.job import RewardSpec, SandboxLimits
from services.eval_worker.reward_library import BUILTIN_REWARDS
from services.eval_worker.sandbox import SandboxResult, run_sandboxed

LIBRARY_SOURCE = Path(__file__).with_name("reward_library.py")


@dataclass
class RewardOutcome:
    spec: RewardSpec
    ok: bool
    values: list[float]
    error: str = ""


def run_reward(
    spec: RewardSpec,
    completions: list[str],
    prompts: list[str],
    columns: dict[str, list[Any]],
    limits: SandboxLimits,
) -> RewardOutcome:
    if spec.name == "code":
        result = run_sandboxed(
            spec.code, spec.params.get("function") or None, completions, {"prompts": prompts, **columns}, limits
        )
    elif spec.name in BUILTIN_REWARDS:
        result = run_sandboxed(
            LIBRARY_SOURCE.read_text(),
            BUILTIN_REWARDS[spec.name],
            completions,
            {"prompts": prompts, "columns": columns, "params": dict(spec.params)},
            limits,
        )
    else:
        result = SandboxResult(False, error=f"unknown reward function {spec.name!r}")
    if not result.ok:
        return RewardOutcome(spec, False, [0.0] * len(completions), result.error)
    return RewardOutcome(spec, True, result.values)


def weighted_rewards(outcomes: list[RewardOutcome], n: int) -> list[float]:
    """sum_k w_k * r_k(c) per completion; a failed reward contributes 0 to every completion."""
    totals = [0.0] * n
    for o in outcomes:
        for i, v in enumerate(o.values):
            totals[i] += o.spec.weight * v
    return totals
