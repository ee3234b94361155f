"""DPO loss of each submission against the base model as reference (beta = 0.1 by default).

Per example: -log sigma(beta * [(log pi(c) - log pi_ref(c)) - (log pi(r) - log pi_ref(r))]), where
log pi(y) is the summed log-probability of the answer tokens (answer + eos) given the prompt.
The reference is the base: `__base__` rows in the same mixed batches for adapter groups, the
adapter disabled for a lone adapter, the base model itself for a full model, always on the same
batches as the policy, so the base submitted as-is (or an all-zero LoRA) scores exactly ln 2.
The baseline (the base model itself, with `baseline`) is its own reference: its loss is computed
from the reference numbers on both sides, which is ln 2 per example by construction.
"""

from __future__ import annotations

import math

from services.eval_worker.job import BASELINE_HOTKEY, EvalJob
from services.eval_worker.model_loading import load_tokenizer, resolve_device
from services.eval_worker.text_data import preference_examples
from services.eval_worker.text_eval import MemberResult, base_nll, batch_plan, group_nll, load_group
from services.eval_worker.validation import ValidatedSubmission


def neg_log_sigmoid(x: float) -> float:
    """-log(sigmoid(x)), stable for large |x|."""
    if x >= 0:
        return math.log1p(math.exp(-x))
    return -x + math.log1p(math.exp(x))


def dpo_loss(
    policy_chosen: float, policy_rejected: float, ref_chosen: float, ref_rejected: float, beta: float
) -> float:
    """DPO loss of one preference pair from summed log-probabilities."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return neg_log_sigmoid(beta * margin)


def pair_losses(policy: list[tuple[float, int]], ref: list[tuple[float, int]], beta: float) -> list[float]:
    """Per-pair DPO losses from (sum_nll, n) of the sequences chosen_0, rejected_0, chosen_1, ..."""
    # log pi(y) = -(summed NLL of y's tokens)
    return [
        dpo_loss(-policy[2 * i][0], -policy[2 * i + 1][0], -ref[2 * i][0], -ref[2 * i + 1][0], beta)
        for i in range(len(policy) // 2)
    ]


def evaluate_dpo_group(
    job: EvalJob, members: list[ValidatedSubmission], baseline: bool = False
) -> dict[str, MemberResult]:
    device = resolve_device(job.device)
    tokenizer = load_tokenizer(job.base_model_dir)
    max_len = job.limits.max_seq_len
    rows = job.test_rows + job.synth_rows
    sequences = []
    for row in rows:
        chosen, rejected = preference_examples(tokenizer, row, max_len)
        sequences += [chosen, rejected]
    group = load_group(job, members, device, need_base=True)
    results = {h: MemberResult(ok=False, reason=r) for h, r in group.failures.items()}
    n_test = len(job.test_rows)
    if group.owners:
        nll = group_nll(group, sequences, tokenizer.pad_token_id, device, batch_plan(job), with_reference=True)
        ref = nll.reference
        assert ref is not None
        for hotkey, member in nll.members.items():
            losses = pair_losses(member, ref, job.dpo_beta)
            results[hotkey] = MemberResult(ok=True, test=losses[:n_test], synth=losses[n_test:])
    elif baseline:
        ref = base_nll(group, sequences, tokenizer.pad_token_id, device, batch_plan(job))
    if baseline:
        assert ref is not None  # set by either branch above
        losses = pair_losses(ref, ref, job.dpo_beta)  # policy = reference: ln 2 each
        results[BASELINE_HOTKEY] = MemberResult(ok=True, test=losses[:n_test], synth=losses[n_test:])
    return results
