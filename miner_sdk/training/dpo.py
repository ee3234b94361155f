"""DPO with a LoRA adapter (plain torch loop), the base model (adapter disabled) as reference.

loss = -log sigmoid(beta * (log pi(c)/ref(c) - log pi(r)/ref(r))) for chosen c and rejected r,
with log-probabilities summed over the completion tokens. Prompts are formatted like SFT
prompts (chat template over [system?, user: prompt]); completions are the response + EOS.
Reference log-probabilities come from the base model (the adapter disabled), computed the first
time a pair is used and kept: with a short budget most pairs are never reached, and computing
all of them up front could take the whole budget before a single step.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model

from miner_sdk.training.common import (
    HyperParams,
    RowsCache,
    TrialRun,
    check_rows,
    optimizer_loop,
    seed_everything,
)
from miner_sdk.training.deadline import Deadline
from miner_sdk.training.sft import (
    AUTOTRAIN_LLM,
    TextBase,
    collate,
    completion_logprobs,
    encode_pair,
    load_text_base,
    lora_config,
    pad_id,
    prompt_messages,
    save_adapter,
)

EVAL_DPO_BETA = 0.1  # the evaluator's beta; validation uses it whatever beta trains


@dataclass
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    ref_chosen: float | None = None  # reference log-probabilities, filled on first use
    ref_rejected: float | None = None


def encode_preference_rows(tokenizer, rows: Sequence[dict], max_length: int) -> list[PreferenceExample]:
    examples = []
    for row in rows:
        messages = prompt_messages(row, str(row["prompt"]))
        chosen = encode_pair(tokenizer, messages, str(row["chosen"]), max_length)
        rejected = encode_pair(tokenizer, messages, str(row["rejected"]), max_length)
        # Truncation may cut the prompt differently for the two; use the shorter one for both.
        prompt = min(chosen.prompt_ids, rejected.prompt_ids, key=len)
        examples.append(
            PreferenceExample(
                prompt_ids=prompt,
                chosen_ids=chosen.completion_ids,
                rejected_ids=rejected.completion_ids,
            )
        )
    return examples


def policy_logprobs(
    model, examples: Sequence[PreferenceExample], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probabilities of (chosen, rejected), one forward for both."""
    pairs = [(e.prompt_ids, e.chosen_ids) for e in examples]
    pairs += [(e.prompt_ids, e.rejected_ids) for e in examples]
    lp_sum, _ = completion_logprobs(model, collate(pairs, pad, device))
    return lp_sum[: len(examples)], lp_sum[len(examples) :]


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al. 2023, eq. 7)."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def reference_mode(model):
    """The reference policy: the base model, i.e. the adapter switched off when there is one."""
    return model.disable_adapter() if isinstance(model, PeftModel) else nullcontext()


@torch.no_grad()
def fill_reference(model, examples: Sequence[PreferenceExample], pad: int, device, batch_size: int = 8) -> None:
    """Reference log-probabilities of the pairs that have none yet (the rest are kept)."""
    missing = [e for e in examples if e.ref_chosen is None or e.ref_rejected is None]
    if not missing:
        return
    was_training = model.training
    model.eval()  # no dropout in the reference
    try:
        with reference_mode(model):
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                chosen, rejected = policy_logprobs(model, chunk, pad, device)
                for e, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
                    e.ref_chosen, e.ref_rejected = c, r
    finally:
        model.train(was_training)


def batch_dpo_loss(model, examples: Sequence[PreferenceExample], pad: int, device, beta: float) -> torch.Tensor:
    fill_reference(model, examples, pad, device, batch_size=len(examples))
    chosen, rejected = policy_logprobs(model, examples, pad, device)
    ref_c = torch.tensor([e.ref_chosen for e in examples], device=chosen.device)
    ref_r = torch.tensor([e.ref_rejected for e in examples], device=chosen.device)
    return dpo_loss(chosen, rejected, ref_c, ref_r, beta).mean()


@torch.no_grad()
def mean_dpo_loss(
    model, examples: Sequence[PreferenceExample], pad: int, device, beta: float, batch_size: int = 8
) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        total += float(batch_dpo_loss(model, chunk, pad, device, beta)) * len(chunk)
    return total / len(examples)


class DpoTrainer:
    """DPO; scored by the DPO loss (beta 0.1) against the base model on held-out pairs."""

    max_val_rows = 200

    def default_hparams(self) -> HyperParams:
        return AUTOTRAIN_LLM  # AutoTrain's DPO uses the LLM defaults with beta 0.1

    def load(self, base_model_dir: Path) -> TextBase:
        return load_text_base(base_model_dir)

    def __init__(self) -> None:
        self._encoded = RowsCache()  # examples with reference log-probs, reused by trials

    def _examples(self, base: TextBase, rows: Sequence[dict], max_length: int) -> list[PreferenceExample]:
        def encode() -> list[PreferenceExample]:
            check_rows(rows, ("prompt", "chosen", "rejected"), "dpo")
            return encode_preference_rows(base.tokenizer, rows, max_length)

        return self._encoded.get(rows, max_length, encode)

    def validation_loss(self, base: TextBase, rows: Sequence[dict], hp: HyperParams) -> float:
        # The base against itself: every margin is 0, so this is log 2 (a useful sanity line).
        examples = self._examples(base, rows, hp.max_length)
        return mean_dpo_loss(base.model, examples, pad_id(base.tokenizer), base.device, EVAL_DPO_BETA)

    def run_trial(
        self,
        base: TextBase,
        train_rows: Sequence[dict],
        val_rows: Sequence[dict],
        hp: HyperParams,
        out_dir: Path,
        deadline: Deadline,
        seed: int,
        step_hint_s: float = 0.0,
        init_adapter: Path | None = None,
    ) -> TrialRun:
        # hp.packing is ignored: a preference pair is scored as two whole sequences, and the
        # rows are short; DPO always trains unpacked.
        seed_everything(seed)
        pad = pad_id(base.tokenizer)
        train_examples = self._examples(base, train_rows, hp.max_length)
        val_examples = self._examples(base, val_rows, hp.max_length) if val_rows else []
        if init_adapter is not None:
            model = PeftModel.from_pretrained(base.model, init_adapter, is_trainable=True)
        else:
            model = get_peft_model(base.model, lora_config(hp))

        def validate() -> float:
            return mean_dpo_loss(model, val_examples, pad, base.device, EVAL_DPO_BETA)

        try:
            stats = optimizer_loop(
                model,
                train_examples,
                lambda m, batch: batch_dpo_loss(m, batch, pad, base.device, hp.dpo_beta),
                hp,
                deadline,
                seed,
                step_hint_s,
                evaluate=validate if val_examples else None,
            )
            save_adapter(model, out_dir)
            if stats.best_val is not None:
                val: float | None = stats.best_val
            else:
                val = validate() if val_examples else None
        finally:
            base.model = model.unload()
        return TrialRun(
            stats.steps,
            stats.stopped_by_deadline,
            val,
            stats.seconds,
            stats.step_seconds,
            losses=stats.losses,
            lrs=stats.lrs,
            evals=stats.evals,
            early_stopped=stats.early_stopped,
        )
