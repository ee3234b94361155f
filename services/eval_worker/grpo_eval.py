"""GRPO: sample completions per submission, score them with the task's rewards, minus beta*KL.

In the child (`evaluate_grpo_group`): for every prompt p and generation j, each submission samples
a completion with its own torch.Generator seeded by (job seed, p, j): the same seeds for every
submission (common random numbers), independent of how rows are batched. Adapters of a group
sample together in mixed-adapter batches with a KV cache. The KL to the base is then estimated
on those completions, teacher-forced, per token with the k3 estimator of Schulman (also used by
GRPO/TRL): with r_t = log pi_base(y_t) - log pi_sub(y_t), kl_t = exp(r_t) - r_t - 1 >= 0, an
unbiased estimate of KL(pi_sub || pi_base) at each position since y_t ~ pi_sub; a completion's
KL is the mean over its tokens (eos included when generated).

In the worker (`score_grpo`): each reward function runs once, in the sandbox, over all
completions of all submissions. Per prompt:
    score(p) = mean_j [ sum_k w_k r_k(c_pj) - beta * KL(c_pj) ],
the set score is the mean over prompts, and loss = -score (lower is better, like every type).
A reward function that fails (timeout, sandbox violation, error) contributes 0 to every
submission, and the reason is attached to every result as a warning.

The baseline (the base model, with `baseline`) samples with the same seeds: `__base__` rows in a
mixed group's batches, otherwise the group's base view (adapter disabled, or the loaded base);
its KL to itself is 0, and its completions are rewarded in the same sandbox runs as the members'.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from services.eval_worker.job import BASELINE_HOTKEY, EvalJob
from services.eval_worker.model_loading import BASE_ADAPTER, load_tokenizer, resolve_device
from services.eval_worker.rewards import run_reward, weighted_rewards
from services.eval_worker.text_data import IGNORE_INDEX, TokenizedExample, generation_prompt_ids
from services.eval_worker.text_eval import BatchPlan, LoadedGroup, MemberResult, batch_plan, load_group, unit_nll
from services.eval_worker.validation import ValidatedSubmission


def generation_seed(job_seed: int, prompt_index: int, generation_index: int) -> int:
    digest = hashlib.sha256(f"{job_seed}:{prompt_index}:{generation_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def k3_kl(member_token_nll: Sequence[float], base_token_nll: Sequence[float]) -> float:
    """Mean over tokens of exp(r) - r - 1 with r = log pi_base - log pi_sub = nll_sub - nll_base."""
    if len(member_token_nll) != len(base_token_nll) or not member_token_nll:
        raise ValueError("KL needs the same non-empty tokens under both models")
    total = 0.0
    for sub_nll, base_nll in zip(member_token_nll, base_token_nll):
        r = sub_nll - base_nll
        total += math.expm1(r) - r
    return total / len(member_token_nll)


def sample_completions(
    model: Any,
    prompts: Sequence[list[int]],
    owners: Sequence[str | None],
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    device: str,
    plan: BatchPlan,
) -> list[list[int]]:
    """Sample one completion per row (prompt, owner, seed); a completion ends with eos if produced.

    Left-padded batches with explicit position ids and a KV cache; each row draws from its own
    generator so its tokens do not depend on its batch neighbours.
    """
    import torch

    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            current = batches[-1]
            width = len(prompts[current[0]]) + max_new_tokens
            if (len(current) + 1) * width <= plan.max_batch_tokens and len(current) < plan.max_batch_size:
                current.append(i)
                continue
        batches.append([i])
    with torch.inference_mode():
        for batch in batches:
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                n = len(prompts[i])
                ids[r, width - n :] = torch.tensor(prompts[i])
                mask[r, width - n :] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            generators = [torch.Generator().manual_seed(seeds[i]) for i in batch]
            kwargs: dict[str, Any] = {}
            if owners[batch[0]] is not None:
                kwargs["adapter_names"] = [owners[i] for i in batch]
            finished = [False] * len(batch)
            past = None
            step_ids, step_pos = ids.to(device), positions.to(device)
            mask = mask.to(device)
            for _ in range(max_new_tokens):
                result = model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=step_pos,
                    cache=past,
                    use_cache=True,
                    **kwargs,
                )
                past = result.cache
                probs = torch.softmax(result.logits[:, -1, :].float() / temperature, dim=-1).cpu()
                next_ids = []
                for r, i in enumerate(batch):
                    if finished[r]:
                        next_ids.append(pad_id)
                        continue
                    token = int(torch.multinomial(probs[r], 1, generator=generators[r]))
                    out[i].append(token)
                    finished[r] = token == eos_id
                    next_ids.append(token)
                if all(finished):
                    break
                step_ids = torch.tensor(next_ids, device=device).unsqueeze(1)
                step_pos = step_pos[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=mask.dtype, device=device)], dim=1)
    return out


def _completion_example(prompt: list[int], completion: list[int]) -> TokenizedExample:
    return TokenizedExample(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)


def completion_kls(
    group: LoadedGroup,
    examples: dict[str, list[TokenizedExample]],
    pad_id: int,
    device: str,
    plan: BatchPlan,
) -> dict[str, list[float]]:
    """k3 KL(member || base) of each member's own completions (teacher-forced)."""
    if group.mixed:
        hotkeys = list(examples)
        units = [[(ex, group.owners[h]), (ex, BASE_ADAPTER)] for h in hotkeys for ex in examples[h]]
        nll = unit_nll(group.model, units, pad_id, device, plan, per_token=True)
        out: dict[str, list[float]] = {}
        k = 0
        for h in hotkeys:
            out[h] = [k3_kl(nll[k + i][0], nll[k + i][1]) for i in range(len(examples[h]))]
            k += len(examples[h])
        return out
    (hotkey,) = examples
    units = [[(ex, None)] for ex in examples[hotkey]]
    member = unit_nll(group.model, units, pad_id, device, plan, per_token=True)
    if group.base_model is not None:
        base = unit_nll(group.base_model, units, pad_id, device, plan, per_token=True)
    else:
        with group.model.disable_adapter():
            base = unit_nll(group.model, units, pad_id, device, plan, per_token=True)
    return {hotkey: [k3_kl(m[0], b[0]) for m, b in zip(member, base)]}


def evaluate_grpo_group(
    job: EvalJob, members: list[ValidatedSubmission], baseline: bool = False
) -> dict[str, MemberResult]:
    """Completions (text) and their KL for every member, prompt and generation."""
    device = resolve_device(job.device)
    tokenizer = load_tokenizer(job.base_model_dir)
    opts = job.grpo
    rows = job.test_rows + job.synth_rows
    prompt_cap = max(1, job.limits.max_seq_len - opts.max_new_tokens)
    prompts = [generation_prompt_ids(tokenizer, row, prompt_cap) for row in rows]
    group = load_group(job, members, device, need_base=True)
    results = {h: MemberResult(ok=False, reason=r) for h, r in group.failures.items()}
    if not group.owners and not baseline:
        return results
    plan = batch_plan(job)
    hotkeys = list(group.owners)
    owners: dict[str, str | None] = dict(group.owners)
    # The base rides in the mixed batches as `__base__`; otherwise it samples on its own below.
    base_in_batches = baseline and group.mixed
    if base_in_batches:
        hotkeys.append(BASELINE_HOTKEY)
        owners[BASELINE_HOTKEY] = BASE_ADAPTER

    def sample(model: Any, who: list[str]) -> list[tuple[str, int, list[int]]]:
        slots = [(h, p, j) for h in who for p in range(len(rows)) for j in range(opts.num_generations)]
        completions = sample_completions(
            model,
            [prompts[p] for _, p, _ in slots],
            [owners.get(h) for h, _, _ in slots],
            [generation_seed(opts.seed, p, j) for _, p, j in slots],
            opts.max_new_tokens,
            opts.temperature,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            device,
            plan,
        )
        return [(h, p, c) for (h, p, _), c in zip(slots, completions)]

    sampled = sample(group.model, hotkeys) if hotkeys else []
    if baseline and not base_in_batches:
        with group.base_view() as base:
            sampled += sample(base, [BASELINE_HOTKEY])
    everyone = hotkeys + ([BASELINE_HOTKEY] if baseline and not base_in_batches else [])
    examples: dict[str, list[TokenizedExample]] = {h: [] for h in everyone}
    texts: dict[str, list[str]] = {h: [] for h in everyone}
    for h, p, completion in sampled:
        examples[h].append(_completion_example(prompts[p], completion))
        body = completion[:-1] if completion and completion[-1] == tokenizer.eos_token_id else completion
        texts[h].append(tokenizer.decode(body, skip_special_tokens=True))
    members_only = {h: ex for h, ex in examples.items() if h != BASELINE_HOTKEY}
    kls = completion_kls(group, members_only, tokenizer.pad_token_id, device, plan) if members_only else {}
    if baseline:
        kls[BASELINE_HOTKEY] = [0.0] * len(examples[BASELINE_HOTKEY])  # KL(base || base) = 0
    for h in everyone:
        # Flat lists in (prompt, generation) order; score_grpo turns them into per-prompt losses.
        results[h] = MemberResult(ok=True, extras={"completions": texts[h], "kl": kls[h]})
    return results


def score_grpo(job: EvalJob, raw: dict[str, MemberResult]) -> dict[str, MemberResult]:
    """Run the reward functions (sandboxed) and fill per-prompt losses -(reward - beta*KL)."""
    rows = job.test_rows + job.synth_rows
    g = job.grpo.num_generations
    scored = dict(raw)
    ok = []
    for h, r in raw.items():
        texts, kl = r.extras.get("completions", []), r.extras.get("kl", [])
        if r.ok and len(texts) == len(kl) == len(rows) * g:
            ok.append(h)
        elif r.ok:
            scored[h] = MemberResult(ok=False, reason="the evaluation returned an incomplete set of completions")
    if not ok:
        return scored
    completions: list[str] = []
    row_of: list[int] = []
    for h in ok:
        completions += raw[h].extras["completions"]
        row_of += [p for p in range(len(rows)) for _ in range(g)]
    prompts = [rows[p]["prompt"] for p in row_of]
    column_names = sorted({k for row in rows for k in row} - {"prompt"})
    columns = {name: [rows[p].get(name) for p in row_of] for name in column_names}
    outcomes = [run_reward(spec, completions, prompts, columns, job.grpo.sandbox) for spec in job.reward_functions]
    warnings = [f"reward {o.spec.name!r} failed and counts 0: {o.error}" for o in outcomes if not o.ok]
    totals = weighted_rewards(outcomes, len(completions))

    n_test = len(job.test_rows)
    offset = 0
    for h in ok:
        kl = raw[h].extras["kl"]
        n = len(rows) * g
        reward = totals[offset : offset + n]
        per_prompt = []
        for p in range(len(rows)):
            values = [reward[p * g + j] - job.grpo.kl_beta * kl[p * g + j] for j in range(g)]
            per_prompt.append(-sum(values) / g)
        extras = {
            "reward_mean": sum(reward) / n,
            "kl_mean": sum(kl) / n,
            "warnings": warnings,
        }
        for o in outcomes:
            extras[f"reward_{o.spec.name}_mean"] = sum(o.values[offset : offset + n]) / n
        scored[h] = MemberResult(ok=True, test=per_prompt[:n_test], synth=per_prompt[n_test:], extras=extras)
        offset += n
    return scored
