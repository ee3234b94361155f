"""DPO loss of each submission against the base model as reference (beta = 0.1 by default).

Per example: -log sigma(beta * [(log pi(c) - log pi_ref(c)) - (log pi(r) - log pi_ref(r))]), where
log pi(y) is the summed log-probability of the answer tokens (answer + eos) given the prompt.
The reference is the base: `__base__` rows in the same mixed batches for adapter groups, the
adapter disabled for a lone adapter, the base model itself for a full model, always on the same
batches as the policy, so the base submitted as-is (or an all-zero LoRA) scores exactly ln 2.
"""

from __future__ import annotations

import math

from services.eval_worker.job import EvalJob
from services.eval_worker.model_loading import load_tokenizer, resolve_device
from services.eval_worker.text_data import preference_examples
from services.eval_worker.text_eval import MemberResult, batch_plan, group_nll, load_group
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


def evaluate_dpo_group(job: EvalJob, members: list[ValidatedSubmission]) -> dict[str, MemberResult]:
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
    if not group.owners:
        return results
    nll = group_nll(group, sequences, tokenizer.pad_token_id, device, batch_plan(job), with_reference=True)
    ref = nll.reference
    assert ref is not None
    for hotkey, member in nll.members.items():
        losses = []
        for i in range(len(rows)):
            # log pi(y) = -(summed NLL of y's tokens)
            losses.append(
                dpo_loss(-member[2 * i][0], -member[2 * i + 1][0], -ref[2 * i][0], -ref[2 * i + 1][0], job.dpo_beta)
            )
        n_test = len(job.test_rows)
        results[hotkey] = MemberResult(ok=True, test=losses[:n_test], synth=losses[n_test:])
    return results
