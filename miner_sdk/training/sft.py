"""Instruct / chat supervised fine-tuning with a LoRA adapter (plain torch loop).

Formatting is the evaluator's (one rule, `gradients.prompts`): the prompt is the tokenizer's
chat template over [system?, user] with the generation prompt added, the user content is the
instruction, then a newline and the input when there is one; the completion is the output followed by
the EOS token. Loss is cross-entropy on completion tokens only. Chat rows give one
(prompt, completion) pair per assistant turn: every message before the turn is the prompt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradients import prompts
from miner_sdk.training import tuning
from miner_sdk.training.common import (
    LORA_TARGETS,
    HyperParams,
    RowsCache,
    TrialRun,
    check_rows,
    optimizer_loop,
    seed_everything,
    training_device,
    training_dtype,
)
from miner_sdk.training.deadline import Deadline

Messages = prompts.Messages

# AutoTrain's LLM defaults (lr 3e-5, 1 epoch, batch 2, accumulation 4, warm-up 0.1, linear,
# LoRA r 16 / alpha 32 / dropout 0.05 on all linear layers, model_max_length 2048).
AUTOTRAIN_LLM = HyperParams()


@dataclass(frozen=True)
class PairExample:
    """A tokenised (prompt, completion) pair."""

    prompt_ids: list[int]
    completion_ids: list[int]


@dataclass
class TextBase:
    model: Any  # a transformers causal LM, adapters are added and removed per trial
    tokenizer: Any
    device: torch.device


def user_content(row: dict) -> str:
    """The user turn of an instruct row (gradients.prompts: the evaluator's rule)."""
    return prompts.instruct_user_content(str(row["instruction"]), str(row.get("input") or ""))


def prompt_messages(row: dict, user: str) -> Messages:
    return prompts.prompt_messages(str(row.get("system") or ""), user)


def sft_pairs(row: dict) -> list[tuple[Messages, str]]:
    """(prompt messages, completion text) pairs of an instruct or chat row."""
    if "conversations" in row:
        conversation = row["conversations"]
        if not isinstance(conversation, list):
            raise ValueError("chat row field 'conversations' must be a list of messages")
        pairs = []
        for i, message in enumerate(conversation):
            if message.get("role") == "assistant" and i > 0:
                pairs.append(([dict(m) for m in conversation[:i]], str(message["content"])))
        if not pairs:
            raise ValueError("chat row has no assistant message after a prompt")
        return pairs
    return [(prompt_messages(row, user_content(row)), str(row["output"]))]


def render_prompt(tokenizer, messages: Messages) -> str:
    return prompts.render_chat(tokenizer, messages, add_generation_prompt=True)


def encode_pair(tokenizer, messages: Messages, completion: str, max_length: int) -> PairExample:
    """Tokenise prompt and completion separately (the template carries its own BOS), then
    truncate: the prompt from the left (keeping the generation prompt), the completion from
    the right, the completion keeping at least half of max_length."""
    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False).input_ids
    eos = tokenizer.eos_token or ""
    answer = tokenizer(completion + eos, add_special_tokens=False).input_ids
    if len(prompt) + len(answer) > max_length:
        answer = answer[: max_length - min(len(prompt), max_length // 2)]
        prompt = prompt[len(prompt) - (max_length - len(answer)) :]
    return PairExample(prompt_ids=list(prompt), completion_ids=list(answer))


def encode_rows(tokenizer, rows: Sequence[dict], max_length: int) -> list[PairExample]:
    examples = []
    for row in rows:
        for messages, completion in sft_pairs(row):
            examples.append(encode_pair(tokenizer, messages, completion, max_length))
    return examples


def check_sft_rows(rows: Sequence[dict]) -> None:
    if rows and all("conversations" in r for r in rows):
        check_rows(rows, ("conversations",), "chat")
    else:
        check_rows(rows, ("instruction", "output"), "instruct")


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (-100 on prompt and padding)."""
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (prompt, completion) in enumerate(pairs):
        n = len(prompt) + len(completion)
        ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, len(prompt) : n] = torch.tensor(completion, dtype=torch.long)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def causal_lm(model):
    """The transformers causal LM under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def scored_token_logprobs(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each labelled next token, mask of labelled positions), both (B, W-1).

    The output head and the softmax run on the labelled positions only: a completion is a few
    tokens of a longer prompt, and over a 49k vocabulary the head is a fifth of the model's
    work per position. Models that rescale their logits get the full forward instead."""
    labels = labels[:, 1:]
    keep = labels != -100
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    rescaled = getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)
    decoder = getattr(lm, "get_decoder", lambda: None)()
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if rescaled or decoder is None or head is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        logprobs = torch.log_softmax(logits.logits[:, :-1].float(), dim=-1)
        token_lp = torch.gather(logprobs, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return token_lp * keep, keep
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state[:, :-1]
    picked = torch.log_softmax(head(hidden[keep]).float(), dim=-1)
    picked = torch.gather(picked, 1, labels[keep].unsqueeze(-1)).squeeze(-1)
    token_lp = torch.zeros(keep.shape, dtype=picked.dtype, device=picked.device)
    token_lp = token_lp.masked_scatter(keep, picked)
    return token_lp, keep


def completion_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (sum of completion-token log-probabilities, completion-token count)."""
    token_lp, keep = scored_token_logprobs(
        model, batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]
    )
    return token_lp.sum(dim=1), keep.sum(dim=1)


def sft_loss(model, examples: Sequence[PairExample], pad: int, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the completion tokens of a micro-batch."""
    batch = collate([(e.prompt_ids, e.completion_ids) for e in examples], pad, device)
    lp_sum, count = completion_logprobs(model, batch)
    return -lp_sum.sum() / count.sum().clamp(min=1)


@dataclass(frozen=True)
class PackedExample:
    """Several (prompt, completion) pairs laid end to end in one sequence."""

    segments: tuple[PairExample, ...]

    @property
    def length(self) -> int:
        return sum(len(e.prompt_ids) + len(e.completion_ids) for e in self.segments)


def pack_examples(examples: Sequence[PairExample], capacity: int) -> list[PackedExample]:
    """First-fit-decreasing packs of at most `capacity` tokens (tuning.pack_lengths)."""
    lengths = [len(e.prompt_ids) + len(e.completion_ids) for e in examples]
    return [PackedExample(tuple(examples[i] for i in pack)) for pack in tuning.pack_lengths(lengths, capacity)]


def collate_packed(packs: Sequence[PackedExample], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """input_ids / position_ids / labels of packed sequences, right-padded. Position ids
    restart at every example (and at the padding), and no attention mask is passed, so
    transformers builds a block-diagonal causal mask: no token attends across examples."""
    width = max(p.length for p in packs)
    ids = torch.full((len(packs), width), pad, dtype=torch.long)
    positions = torch.zeros((len(packs), width), dtype=torch.long)
    labels = torch.full((len(packs), width), -100, dtype=torch.long)
    for row, pack in enumerate(packs):
        at = 0
        lengths = []
        for e in pack.segments:
            n = len(e.prompt_ids) + len(e.completion_ids)
            ids[row, at : at + n] = torch.tensor(e.prompt_ids + e.completion_ids, dtype=torch.long)
            labels[row, at + len(e.prompt_ids) : at + n] = torch.tensor(e.completion_ids, dtype=torch.long)
            lengths.append(n)
            at += n
        if at < width:
            lengths.append(width - at)
        positions[row] = torch.tensor(tuning.segment_positions(lengths), dtype=torch.long)
    return {"input_ids": ids.to(device), "position_ids": positions.to(device), "labels": labels.to(device)}


def packed_token_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each labelled next token, mask of labelled positions), both (B, W-1)."""
    return scored_token_logprobs(model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"])


def packed_sft_loss(model, packs: Sequence[PackedExample], pad: int, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the completion tokens of a micro-batch of packs (the same
    value as sft_loss over the packs' examples)."""
    token_lp, keep = packed_token_logprobs(model, collate_packed(packs, pad, device))
    return -token_lp.sum() / keep.sum().clamp(min=1)


@torch.no_grad()
def completion_loss(model, tokenizer, rows: Sequence[dict], max_length: int = 2048, batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy on the completion tokens of the rows (the
    evaluator's text metric)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = encode_rows(tokenizer, rows, max_length)
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate([(e.prompt_ids, e.completion_ids) for e in chunk], pad_id(tokenizer), device)
        lp_sum, count = completion_logprobs(model, batch)
        total -= float(lp_sum.sum())
        tokens += int(count.sum())
    model.train(was_training)
    if tokens == 0:
        raise ValueError("no completion tokens to score (are the outputs empty?)")
    return total / tokens


def lora_config(hp: HyperParams) -> LoraConfig:
    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=LORA_TARGETS[hp.lora_target],
        task_type="CAUSAL_LM",
    )


def load_text_base(base_model_dir: str | Path) -> TextBase:
    device = training_device()
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer in {base_model_dir} has no chat template")
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=training_dtype())
    model.to(device)
    model.requires_grad_(False)
    model.eval()
    return TextBase(model=model, tokenizer=tokenizer, device=device)


def save_adapter(peft_model: PeftModel, out_dir: Path) -> None:
    """Only the adapter, as safetensors (no pickles: the validator rejects them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir, safe_serialization=True)


class SftTrainer:
    """Instruct and chat SFT; scored by completion-token cross-entropy."""

    max_val_rows = 200

    def __init__(self) -> None:
        self._encoded = RowsCache()  # tokenised rows, reused by trials

    def default_hparams(self) -> HyperParams:
        return AUTOTRAIN_LLM

    def load(self, base_model_dir: Path) -> TextBase:
        return load_text_base(base_model_dir)

    def validation_loss(self, base: TextBase, rows: Sequence[dict], hp: HyperParams) -> float:
        return completion_loss(base.model, base.tokenizer, rows, hp.max_length)

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
        seed_everything(seed)

        def encode() -> list[PairExample]:
            check_sft_rows(train_rows)
            return encode_rows(base.tokenizer, train_rows, hp.max_length)

        examples = self._encoded.get(train_rows, hp.max_length, encode)
        pad = pad_id(base.tokenizer)
        if hp.packing:
            capacity = hp.pack_length or hp.max_length
            units: Sequence[Any] = self._encoded.get(
                train_rows, (hp.max_length, "packed", capacity), lambda: pack_examples(examples, capacity)
            )

            def loss_fn(m: Any, batch: list[Any]) -> torch.Tensor:
                return packed_sft_loss(m, batch, pad, base.device)
        else:
            units = examples

            def loss_fn(m: Any, batch: list[Any]) -> torch.Tensor:
                return sft_loss(m, batch, pad, base.device)

        if init_adapter is not None:
            model = PeftModel.from_pretrained(base.model, init_adapter, is_trainable=True)
        else:
            model = get_peft_model(base.model, lora_config(hp))

        def validate() -> float:
            return completion_loss(model, base.tokenizer, val_rows, hp.max_length)

        try:
            stats = optimizer_loop(
                model,
                units,
                loss_fn,
                hp,
                deadline,
                seed,
                step_hint_s,
                evaluate=validate if val_rows else None,
            )
            save_adapter(model, out_dir)
            if stats.best_val is not None:
                val: float | None = stats.best_val
            else:
                val = validate() if val_rows else None
        finally:
            base.model = model.unload()  # the base without LoRA layers, for the next trial
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


@dataclass
class SftResult:
    adapter_dir: Path
    steps: int
    stopped_by_deadline: bool
    seconds: float


def train_sft(
    base_model_dir: str | Path,
    rows: Sequence[dict],
    out_dir: str | Path,
    hparams: HyperParams = AUTOTRAIN_LLM,
    deadline: Deadline | None = None,
    seed: int = 0,
) -> SftResult:
    """One LoRA SFT run on all rows; the adapter is saved as safetensors in out_dir."""
    started = time.time()
    deadline = deadline or Deadline(at=float("inf"))
    trainer = SftTrainer()
    base = trainer.load(Path(base_model_dir))
    run = trainer.run_trial(base, rows, [], hparams, Path(out_dir), deadline, seed)
    return SftResult(Path(out_dir), run.steps, run.stopped_by_deadline, time.time() - started)
