"""From one job to per-submission results: validate, group, run isolated, retry, assemble."""

from __future__ import annotations

from typing import Protocol

from services.eval_worker.isolation import ChildLimits, ChildOutcome, run_in_child, run_in_process
from services.eval_worker.job import BASELINE_HOTKEY, EvalJob, JobOutcome, Submission, SubmissionEval, failed
from services.eval_worker.logic import assemble, baseline_group, plan_groups
from services.eval_worker.text_eval import MemberResult
from services.eval_worker.validation import (
    SubmissionRefused,
    ValidatedSubmission,
    read_base_info,
    validate_submission,
)
from services.eval_worker.warm import WarmBases


class GroupFn(Protocol):
    """Evaluates one group in a child; with baseline, also the base model under BASELINE_HOTKEY."""

    def __call__(
        self, job: EvalJob, members: list[ValidatedSubmission], baseline: bool = False
    ) -> dict[str, MemberResult]: ...


def evaluate_group(job: EvalJob, members: list[ValidatedSubmission], baseline: bool = False) -> dict[str, MemberResult]:
    """Evaluate one group with its base model loaded once (runs inside the child)."""
    if job.task_type in ("INSTRUCT_TEXT", "CHAT"):
        from services.eval_worker.text_eval import evaluate_text_group

        return evaluate_text_group(job, members, baseline)
    if job.task_type == "DPO":
        from services.eval_worker.dpo_eval import evaluate_dpo_group

        return evaluate_dpo_group(job, members, baseline)
    if job.task_type == "GRPO":
        from services.eval_worker.grpo_eval import evaluate_grpo_group

        return evaluate_grpo_group(job, members, baseline)
    from services.eval_worker.image_eval import evaluate_image_group

    return evaluate_image_group(job, members, baseline)


def _child_limits(job: EvalJob) -> ChildLimits:
    from services.eval_worker.model_loading import resolve_device

    return ChildLimits(
        memory_bytes=job.limits.child_memory_bytes,
        timeout_s=job.limits.child_timeout_s,
        torch_threads=job.limits.torch_threads,
        device=resolve_device(job.device),
    )


# This worker's warm holders (EvalLimits.warm_bases of them at most; see warm.py).
WARM = WarmBases()
# Task types whose groups load the causal-LM base (image groups load a diffusers pipeline).
WARM_TASK_TYPES = ("INSTRUCT_TEXT", "CHAT", "DPO", "GRPO")


def run_groups(
    job: EvalJob,
    groups: list[list[ValidatedSubmission]],
    group_fn: GroupFn = evaluate_group,
    with_baseline: bool = True,
) -> dict[str, MemberResult]:
    """Each group in its own child; the members of a failed group are retried one per child.

    With with_baseline, the result also holds the base model under BASELINE_HOTKEY: computed in
    the group `baseline_group` picks, or (none, or that group failed) in a child of its own.
    """
    limits = _child_limits(job) if job.limits.isolate else None

    def run(members: list[ValidatedSubmission], baseline: bool = False) -> ChildOutcome:
        if limits is None:
            return run_in_process(group_fn, (job, members, baseline))
        if job.task_type in WARM_TASK_TYPES:
            warm = WARM.run(group_fn, (job, members, baseline), limits, job.base_model_dir, job.limits.warm_bases)
            if warm is not None:
                return warm
        return run_in_child(group_fn, (job, members, baseline), limits)

    missing = MemberResult(ok=False, reason="the evaluation returned no result")
    carrier = baseline_group(job, groups) if with_baseline else None
    results: dict[str, MemberResult] = {}
    for index, group in enumerate(groups):
        outcome = run(group, baseline=index == carrier)
        if outcome.ok:
            for member in group:
                results[member.hotkey] = outcome.value.get(member.hotkey, missing)
            if index == carrier and BASELINE_HOTKEY in outcome.value:
                results[BASELINE_HOTKEY] = outcome.value[BASELINE_HOTKEY]
            continue
        if len(group) == 1:
            results[group[0].hotkey] = MemberResult(ok=False, reason=outcome.reason)
            continue
        # A shared batch crashed: find the culprit by evaluating everyone on their own.
        for member in group:
            single = run([member])
            if single.ok:
                results[member.hotkey] = single.value.get(member.hotkey, missing)
            else:
                results[member.hotkey] = MemberResult(ok=False, reason=single.reason)
    if with_baseline and BASELINE_HOTKEY not in results:
        # No group carried it (or its group crashed, possibly because of it): the base alone.
        alone = run([], baseline=True)
        results[BASELINE_HOTKEY] = (
            alone.value.get(BASELINE_HOTKEY, missing) if alone.ok else MemberResult(ok=False, reason=alone.reason)
        )
    return results


def run_job(job: EvalJob, submissions: list[Submission], group_fn: GroupFn = evaluate_group) -> JobOutcome:
    hotkeys = [s.hotkey for s in submissions]
    if len(set(hotkeys)) != len(hotkeys):
        raise ValueError("submissions must have distinct hotkeys")
    base = read_base_info(job.base_model_dir, job.task_type)
    refused: dict[str, SubmissionEval] = {}
    accepted: list[ValidatedSubmission] = []
    for sub in submissions:
        if sub.hotkey == BASELINE_HOTKEY:  # that key is the base model's
            refused[sub.hotkey] = failed(sub.hotkey, "refused: the submission has no miner hotkey")
            continue
        try:
            accepted.append(validate_submission(sub, base, job.task_type, job.limits))
        except SubmissionRefused as exc:
            refused[sub.hotkey] = failed(sub.hotkey, f"refused: {exc}")
        except OSError as exc:
            refused[sub.hotkey] = failed(sub.hotkey, f"refused: upload unreadable ({exc})")
        except Exception as exc:  # a malformed upload must never fail the whole job
            refused[sub.hotkey] = failed(sub.hotkey, f"refused: invalid upload ({type(exc).__name__}: {exc})")
    raw = run_groups(job, plan_groups(job, accepted), group_fn)
    if job.task_type == "GRPO":
        from services.eval_worker.grpo_eval import score_grpo

        # The baseline's completions go through the same sandboxed reward runs as the members'.
        raw = score_grpo(job, raw)
    kinds = {v.hotkey: v.kind for v in accepted}
    results = [refused[h] if h in refused else assemble(job, h, kinds[h], raw[h]) for h in hotkeys]
    return JobOutcome(results, assemble(job, BASELINE_HOTKEY, "base", raw[BASELINE_HOTKEY]))
