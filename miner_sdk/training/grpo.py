"""GRPO with a LoRA adapter through trl's GRPOTrainer, with built-in reward functions.

Rows are {prompt, system?, <extra columns the rewards read>}. Prompts are given to trl in
conversational form ([system?, user]), so trl applies the chat template with the generation
prompt, like the SFT and DPO prompts. A trial is scored by the negated weighted mean reward
of greedy completions on held-out prompts (lower is better, like every other score here).

Reward functions are plain, deterministic Python (no `exec` of task-supplied code):
- format:        1 when the completion matches `pattern` (regex, default: an <answer> tag)
- length:        1 - |chars - target_chars| / target_chars, floored at 0
- exact_match:   1 when the answer (inside <answer>...</answer> if present, else the whole
                 completion) equals row[column] after trimming and case-folding
- numeric_match: 1 when the last number in the answer equals float(row[column]) (tolerance)
- keyword:       fraction of keywords present (row[column]: list or comma-separated text,
                 or params["keywords"])
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from miner_sdk.training.common import (
    HyperParams,
    TrialRun,
    check_rows,
    deadline_schedule,
    seed_everything,
    training_dtype,
)
from miner_sdk.training.deadline import Deadline, DeadlineCallback
from miner_sdk.training.sft import (
    AUTOTRAIN_LLM,
    TextBase,
    load_text_base,
    lora_config,
    prompt_messages,
    render_prompt,
    save_adapter,
)

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
# Keyword arguments trl passes to reward functions that are not dataset columns.
_TRL_EXTRA_KWARGS = {
    "prompts",
    "completions",
    "completion_ids",
    "trainer_state",
    "log_extra",
    "log_metric",
    "environments",
}


def extract_answer(completion: str) -> str:
    match = ANSWER_TAG.search(completion)
    return (match.group(1) if match else completion).strip()


def parse_number(text: str) -> float | None:
    try:
        return float(str(text).strip().replace(",", ""))
    except ValueError:
        return None


def format_reward(completion: str, row: dict, pattern: str = r"(?s).*<answer>.+?</answer>.*") -> float:
    return 1.0 if re.fullmatch(pattern, completion.strip()) else 0.0


def length_reward(completion: str, row: dict, target_chars: int = 200) -> float:
    if target_chars <= 0:
        raise ValueError(f"length reward target_chars must be positive, not {target_chars}")
    return max(0.0, 1.0 - abs(len(completion.strip()) - target_chars) / target_chars)


def exact_match_reward(completion: str, row: dict, column: str = "answer") -> float:
    expected = str(row.get(column, "")).strip().casefold()
    return 1.0 if expected and extract_answer(completion).casefold() == expected else 0.0


def numeric_match_reward(completion: str, row: dict, column: str = "answer", rel_tol: float = 1e-6) -> float:
    expected = parse_number(row.get(column, ""))
    numbers = NUMBER.findall(extract_answer(completion))
    if expected is None or not numbers:
        return 0.0
    got = parse_number(numbers[-1])
    return 1.0 if got is not None and math.isclose(got, expected, rel_tol=rel_tol, abs_tol=1e-9) else 0.0


def keyword_reward(
    completion: str, row: dict, column: str = "keywords", keywords: Sequence[str] | None = None
) -> float:
    words = keywords if keywords is not None else row.get(column, [])
    if isinstance(words, str):
        words = words.split(",")
    words = [w.strip().casefold() for w in words if str(w).strip()]
    if not words:
        return 0.0
    text = completion.casefold()
    return sum(w in text for w in words) / len(words)


REWARD_FUNCTIONS: dict[str, Callable[..., float]] = {
    "format": format_reward,
    "length": length_reward,
    "exact_match": exact_match_reward,
    "numeric_match": numeric_match_reward,
    "keyword": keyword_reward,
}


@dataclass(frozen=True)
class RewardSpec:
    name: str  # a key of REWARD_FUNCTIONS
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in REWARD_FUNCTIONS:
            raise ValueError(f"RewardSpec.name must be one of {sorted(REWARD_FUNCTIONS)}, not {self.name!r}")

    def __call__(self, completion: str, row: dict) -> float:
        return REWARD_FUNCTIONS[self.name](completion, row, **self.params)


def default_rewards(rows: Sequence[dict]) -> list[RewardSpec]:
    """Rewards the rows can support: a numeric or exact answer, keywords; else length."""
    columns = set().union(*(row.keys() for row in rows)) if rows else set()
    specs = []
    if "answer" in columns:
        numeric = all(parse_number(row.get("answer", "")) is not None for row in rows)
        specs.append(RewardSpec("numeric_match" if numeric else "exact_match"))
    if "keywords" in columns:
        specs.append(RewardSpec("keyword"))
    return specs or [RewardSpec("length")]


def completion_text(completion: Any) -> str:
    """trl gives conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


def trl_reward(spec: RewardSpec) -> Callable[..., list[float]]:
    """Adapt a reward spec to trl's batch signature (columns arrive as lists in kwargs)."""

    def reward(prompts, completions, **kwargs) -> list[float]:
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_EXTRA_KWARGS}
        rows = [{k: v[i] for k, v in columns.items()} for i in range(len(completions))]
        return [spec(completion_text(c), row) for c, row in zip(completions, rows, strict=True)]

    reward.__name__ = spec.name
    return reward


def weighted_reward(specs: Sequence[RewardSpec], completion: str, row: dict) -> float:
    return sum(spec.weight * spec(completion, row) for spec in specs)


@torch.no_grad()
def mean_greedy_reward(
    base_tokenizer, model, rows: Sequence[dict], specs: Sequence[RewardSpec], max_new_tokens: int
) -> float:
    """Weighted mean reward of greedy completions (one prompt at a time: no padding effects)."""
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for row in rows:
        prompt = render_prompt(base_tokenizer, prompt_messages(row, str(row["prompt"])))
        ids = base_tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=base_tokenizer.pad_token_id,
            eos_token_id=base_tokenizer.eos_token_id,
        )
        text = base_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        total += weighted_reward(specs, text, row)
    return total / len(rows)


def grpo_dataset(rows: Sequence[dict]) -> Dataset:
    records = []
    for row in rows:
        record = {k: v for k, v in row.items() if k not in ("prompt", "system")}
        record["prompt"] = prompt_messages(row, str(row["prompt"]))
        records.append(record)
    return Dataset.from_list(records)


def grpo_config(hp: HyperParams, specs: Sequence[RewardSpec], output_dir: str, seed: int) -> GRPOConfig:
    on_gpu = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=output_dir,
        seed=seed,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        # One prompt's group per micro-batch; accumulation gathers grad_accum prompts.
        per_device_train_batch_size=hp.num_generations,
        gradient_accumulation_steps=hp.grad_accum,
        num_generations=hp.num_generations,
        max_completion_length=hp.max_completion_length,
        temperature=hp.temperature,
        beta=hp.grpo_beta,
        reward_weights=[s.weight for s in specs],
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        gradient_checkpointing=False,
        use_cpu=not on_gpu,
        bf16=training_dtype() == torch.bfloat16,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


class DeadlineGRPOTrainer(GRPOTrainer):
    """trl's GRPOTrainer with the deadline-aware learning-rate schedule (see common.py)."""

    def __init__(self, deadline: Deadline, hp: HyperParams, **kwargs: Any) -> None:
        self._deadline, self._hp = deadline, hp
        super().__init__(**kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = deadline_schedule(
                optimizer or self.optimizer, self._hp, num_training_steps, self._deadline
            )
        return self.lr_scheduler


class GrpoTrainer:
    """GRPO; scored by the negated weighted mean reward of greedy held-out completions."""

    max_val_rows = 32  # scoring generates text, keep it short

    def __init__(self, rewards: Sequence[RewardSpec] | None = None) -> None:
        self.rewards = list(rewards) if rewards is not None else None

    def default_hparams(self) -> HyperParams:
        return AUTOTRAIN_LLM

    def load(self, base_model_dir: Path) -> TextBase:
        return load_text_base(base_model_dir)

    def _specs(self, rows: Sequence[dict]) -> list[RewardSpec]:
        return self.rewards if self.rewards is not None else default_rewards(rows)

    def validation_loss(self, base: TextBase, rows: Sequence[dict], hp: HyperParams) -> float:
        return -mean_greedy_reward(base.tokenizer, base.model, rows, self._specs(rows), hp.max_completion_length)

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
    ) -> TrialRun:
        check_rows(train_rows, ("prompt",), "grpo")
        seed_everything(seed)
        specs = self._specs(train_rows)
        callback = DeadlineCallback(deadline, step_hint_s)
        with tempfile.TemporaryDirectory(prefix="grpo-") as scratch:
            # Given the base and a peft_config (not a PeftModel), trl takes the reference
            # log-probs with the adapter disabled instead of from a second "ref" adapter.
            trainer = DeadlineGRPOTrainer(
                deadline,
                hp,
                model=base.model,
                reward_funcs=[trl_reward(s) for s in specs],
                args=grpo_config(hp, specs, scratch, seed),
                train_dataset=grpo_dataset(train_rows),
                processing_class=base.tokenizer,
                peft_config=lora_config(hp),
                callbacks=[callback],
            )
            model = trainer.model
            started = time.time()
            try:
                # The Trainer runs its first step even when told to stop at train begin.
                if not callback.guard.should_stop():
                    trainer.train()
                train_seconds = time.time() - started
                save_adapter(model, out_dir)
                val = (
                    -mean_greedy_reward(base.tokenizer, model, val_rows, specs, hp.max_completion_length)
                    if val_rows
                    else None
                )
            finally:
                base.model = model.unload()
                base.model.requires_grad_(False)
        steps = trainer.state.global_step
        step_seconds = callback.guard.step_estimate() if steps else 0.0
        return TrialRun(steps, callback.stopped_by_deadline, val, train_seconds, step_seconds)
