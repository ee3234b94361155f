"""eval_worker's pure parts: which plan a group runs, how submissions are grouped, and how the
per-example numbers a child returns become a submission's losses (§3.4). No I/O, no models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from services.eval_worker.job import EvalJob, SubmissionEval, failed

if TYPE_CHECKING:  # only their fields are read here; importing them would pull in torch
    from services.eval_worker.text_eval import MemberResult
    from services.eval_worker.validation import ValidatedSubmission

PLANS = ("auto", "mixed", "merged")


# CPU -> merged: a merged pass is the plain model (no per-adapter split and small matmuls in every
# LoRA layer) and can share the rows' common prompt prefix (text_eval, ~1/3 of SmolLM2's tokens on
# the benchmark rows), which mixed batches cannot (the prefix differs by adapter). NOT YET MEASURED
# side by side: confirm with `python -m benchmarks.eval_throughput --model smollm2 --plan mixed`
# vs `--plan merged` on a quiet CPU and put the medians here. CUDA -> mixed (K+1 times larger
# batches on short rows) until benchmarks/device_check.sh has measured both plans on a GPU.
def choose_plan(requested: str, device: str, n_adapters: int, mergeable: bool) -> str:
    """The plan of one adapter group: `requested` unless "auto"; merged needs mergeable weights."""
    if requested not in PLANS:
        raise ValueError(f"eval plan must be one of {PLANS}, got {requested!r}")
    if n_adapters < 2:
        return "single"  # one adapter: evaluated as it is, nothing to mix or merge
    if not mergeable:
        return "mixed"
    if requested != "auto":
        return requested
    return "merged" if device == "cpu" else "mixed"


def plan_groups(job: EvalJob, accepted: list[ValidatedSubmission]) -> list[list[ValidatedSubmission]]:
    """Mixed-batch adapters share groups (up to max_adapters_per_group); the rest go alone.

    Image adapters are swapped one after another on one pipeline, so they share groups too.
    """
    shareable = [v for v in accepted if v.kind == "adapter" and (v.mixed_batch_ok or job.task_type == "IMAGE")]
    alone = [v for v in accepted if v not in shareable]
    size = job.limits.max_adapters_per_group
    groups = [shareable[i : i + size] for i in range(0, len(shareable), size)]
    return groups + [[v] for v in alone]


def baseline_group(job: EvalJob, groups: list[list[ValidatedSubmission]]) -> int | None:
    """Index of the first group whose child loads the base anyway, so the baseline costs no load.

    Adapter groups always load the base; DPO and GRPO load it for a full model too (reference,
    KL); a text full-model group does not, so the baseline then gets a child of its own (None).
    """
    for i, group in enumerate(groups):
        if job.task_type in ("DPO", "GRPO") or any(m.kind == "adapter" for m in group):
            return i
    return None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def assemble(job: EvalJob, hotkey: str, kind: str, result: MemberResult) -> SubmissionEval:
    """Set losses from per-example numbers: L_weighted = w*L_test + (1-w)*L_synth (no synth: L_test)."""
    if not result.ok:
        return failed(hotkey, result.reason or "evaluation failed", kind)
    values = result.test + result.synth
    if not result.test or not all(math.isfinite(v) for v in values):
        return failed(hotkey, "evaluation produced a non-finite or empty loss", kind)
    loss_test = _mean(result.test)
    loss_synth = _mean(result.synth) if result.synth else None
    if job.task_type == "IMAGE" or loss_synth is None:
        # Image: L_weighted is eq 16/17's delta-mix on D_test; the synth loss is reported alongside.
        loss_weighted = loss_test
    else:
        loss_weighted = job.test_weight * loss_test + (1.0 - job.test_weight) * loss_synth
    out = SubmissionEval(
        hotkey=hotkey,
        ok=True,
        loss_test=loss_test,
        loss_synth=loss_synth,
        loss_weighted=loss_weighted,
        per_example_test=list(result.test),
        per_example_synth=list(result.synth),
        kind=kind,
        details={k: v for k, v in result.extras.items() if isinstance(v, float)},
        warnings=list(result.extras.get("warnings", [])),
    )
    if job.task_type == "GRPO":
        out.score_test = -loss_test
        out.score_synth = -loss_synth if loss_synth is not None else None
        out.score_weighted = -loss_weighted
    return out
