"""Pieces shared by every task trainer: hyperparameters, trial outcomes, the optimiser loop."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import torch

from miner_sdk.training.deadline import Deadline, DeadlineGuard


class TaskType(StrEnum):
    INSTRUCT = "instruct"
    CHAT = "chat"
    DPO = "dpo"
    GRPO = "grpo"
    IMAGE = "image"

    @classmethod
    def parse(cls, value: str | TaskType) -> TaskType:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ValueError(f"task_type must be one of {names}, not {value!r}") from None


SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "exponential")
LORA_TARGETS = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


def schedule_multiplier(name: str, warmup_ratio: float, progress: float, end_factor: float = 1.0) -> float:
    """The learning-rate multiplier at `progress` (0..1) of training, like transformers'
    schedules of the same names but over a fraction instead of a step count.
    "exponential" (the LR range test's ramp) grows geometrically from 1 to end_factor."""
    progress = min(max(progress, 0.0), 1.0)
    if name == "constant":
        return 1.0
    if name == "exponential":
        return float(end_factor**progress)
    if warmup_ratio > 0 and progress < warmup_ratio:
        return progress / warmup_ratio
    if name == "constant_with_warmup":
        return 1.0
    decay = (progress - warmup_ratio) / (1.0 - warmup_ratio)
    if name == "linear":
        return max(0.0, 1.0 - decay)
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * decay))
    raise ValueError(f"unknown schedule {name!r}; known: {SCHEDULES}")


def deadline_schedule(
    optimizer: torch.optim.Optimizer, hp: HyperParams, total_steps: int, deadline: Deadline
) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule whose progress is the larger of steps done / planned steps and time spent /
    time budget, so warm-up and decay complete even when the deadline cuts the run short
    (a step-based schedule would leave a time-boxed trial stuck in warm-up at a high lr)."""
    start = time.time()
    budget = deadline.training_end - start
    # The LR range test's ramp goes by steps only: each step must see its own planned lr.
    by_time = hp.scheduler != "exponential"

    def multiplier(step: int) -> float:
        progress = step / max(1, total_steps - 1) if not by_time else step / total_steps
        if by_time and math.isfinite(budget) and budget > 0:
            progress = max(progress, (time.time() - start) / budget)
        return schedule_multiplier(hp.scheduler, hp.warmup_ratio, progress, hp.lr_end_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


@dataclass(frozen=True)
class HyperParams:
    """One training configuration. Each task trainer reads the fields that apply to it."""

    learning_rate: float = 3e-5
    epochs: float = 1.0
    batch_size: int = 2
    grad_accum: int = 4
    warmup_ratio: float = 0.1
    scheduler: str = "linear"  # one of SCHEDULES
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = -1  # optimiser steps; -1 = as many as `epochs` gives
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target: str = "all-linear"  # one of LORA_TARGETS
    max_length: int = 2048  # text: prompt + completion tokens
    lr_end_factor: float = 1.0  # "exponential" schedule: the last step's lr / learning_rate
    # Text SFT: pack several examples into one sequence of at most pack_length tokens
    # (0 = max_length); attention never crosses examples (position ids restart per example).
    packing: bool = False
    pack_length: int = 0
    # Early stopping on the validation slice: score it every eval_every_s seconds of training
    # (0 = never), keep the best weights, stop after `patience` scores without improvement
    # (0 = never stop early, only keep the best).
    eval_every_s: float = 0.0
    patience: int = 0
    # DPO
    dpo_beta: float = 0.1
    # GRPO
    num_generations: int = 4
    max_completion_length: int = 128
    grpo_beta: float = 0.04  # KL weight; the evaluator also subtracts beta * KL
    temperature: float = 1.0
    # image
    resolution: int = 0  # 0 = the UNet's native size
    caption_dropout: float = 0.1  # the evaluator also scores without the prompt

    def __post_init__(self) -> None:
        positive = {
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "max_length": self.max_length,
            "num_generations": self.num_generations,
            "max_completion_length": self.max_completion_length,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"HyperParams.{name} must be positive, not {value}")
        for name in ("warmup_ratio", "lora_dropout", "caption_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"HyperParams.{name} must be in [0, 1), not {value}")
        if self.lora_target not in LORA_TARGETS:
            raise ValueError(f"HyperParams.lora_target must be one of {sorted(LORA_TARGETS)}, not {self.lora_target!r}")
        if not self.lr_end_factor > 0 or self.pack_length < 0 or self.eval_every_s < 0 or self.patience < 0:
            raise ValueError("HyperParams.lr_end_factor must be positive; pack_length, eval_every_s, patience >= 0")
        if self.scheduler not in SCHEDULES:
            raise ValueError(f"HyperParams.scheduler must be one of {SCHEDULES}, not {self.scheduler!r}")
        if self.num_generations < 2:
            raise ValueError("HyperParams.num_generations must be >= 2 (GRPO compares a group)")


@dataclass
class TrialOutcome:
    index: int
    hparams: HyperParams
    adapter_dir: Path
    val_loss: float | None  # on the held-out slice; None when nothing was held out
    steps: int  # optimiser steps taken
    seconds: float
    stopped_by_deadline: bool
    label: str = ""  # what the strategy ran it for ("lr range test", "rung 1", ...)
    init_from: int | None = None  # the trial whose adapter it continued
    run: TrialRun | None = None  # the task trainer's full report (losses, lrs, evaluations)


@dataclass
class LoopStats:
    steps: int = 0
    micro_steps: int = 0
    stopped_by_deadline: bool = False
    seconds: float = 0.0
    step_seconds: float = 0.0  # the guard's step estimate at the end
    losses: list[float] = field(default_factory=list)  # per micro-step training loss
    lrs: list[float] = field(default_factory=list)  # per micro-step learning rate
    evals: list[tuple[float, float]] = field(default_factory=list)  # (unix time, val loss)
    best_val: float | None = None  # with early stopping: the kept weights' val loss
    early_stopped: bool = False


@dataclass
class TrialRun:
    """What a task trainer reports about one trial."""

    steps: int  # optimiser steps taken
    stopped_by_deadline: bool
    val_loss: float | None
    train_seconds: float  # the training loop alone (no setup, saving or scoring)
    step_seconds: float  # how long a step took (the guard's estimate), 0 if none ran
    losses: list[float] = field(default_factory=list)  # per micro-step training loss
    lrs: list[float] = field(default_factory=list)  # per micro-step learning rate
    evals: list[tuple[float, float]] = field(default_factory=list)  # (unix time, val loss)
    early_stopped: bool = False


class TaskTrainer(Protocol):
    """What a strategy needs from a task type (see sft.py, dpo.py, grpo.py, image.py)."""

    max_val_rows: int

    def default_hparams(self) -> HyperParams: ...

    def load(self, base_model_dir: Path) -> Any: ...

    def validation_loss(self, base: Any, rows: Sequence[dict], hp: HyperParams) -> float:
        """The untouched base model's score on rows (lower is better), measured like a
        trial's validation score with the same hparams."""
        ...

    def run_trial(
        self,
        base: Any,
        train_rows: Sequence[dict],
        val_rows: Sequence[dict],
        hp: HyperParams,
        out_dir: Path,
        deadline: Deadline,
        seed: int,
        step_hint_s: float = 0.0,
        init_adapter: Path | None = None,
    ) -> TrialRun:
        """Train a fresh adapter on `base` until done or `deadline`, save it to out_dir, score
        it on val_rows (if any), and remove it from `base` again. step_hint_s: the step time
        seen in earlier trials, so the first step is not started when it cannot finish.
        init_adapter: continue training that saved adapter instead of a fresh one (its LoRA
        shape is kept; hp's lora_* fields are then ignored). With hp.eval_every_s > 0 the
        trial scores val_rows during training and keeps its best weights (early stopping)."""
        ...


class RowsCache:
    """Encoded rows reused across the trials of one `train` call (same row objects).

    Keyed by the identities of the row dicts: the caller keeps them alive for the whole
    call, so an identity cannot be reused by another row meanwhile.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[Sequence[dict], Any]] = {}

    def get(self, rows: Sequence[dict], variant: Any, build: Callable[[], Any]) -> Any:
        key = (tuple(id(r) for r in rows), variant)
        if key not in self._entries:
            # The rows are stored with the value so their ids stay taken while cached.
            self._entries[key] = (rows, build())
        return self._entries[key][1]


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_dtype() -> torch.dtype:
    """bf16 base weights on GPUs that support it (LoRA weights stay fp32 in peft)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def check_rows(rows: Sequence[dict], required: Sequence[str], kind: str) -> None:
    if not rows:
        raise ValueError(f"no {kind} rows to train on")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{kind} row {i} must be a dict, not {type(row).__name__}")
        missing = [name for name in required if not str(row.get(name) or "").strip()]
        if missing:
            raise ValueError(f"{kind} row {i} lacks required field(s) {missing}")


def planned_steps(n_examples: int, hp: HyperParams) -> int:
    micro_per_epoch = math.ceil(n_examples / hp.batch_size)
    steps = max(1, math.ceil(hp.epochs * micro_per_epoch / hp.grad_accum))
    return min(steps, hp.max_steps) if hp.max_steps > 0 else steps


def optimizer_loop(
    model: torch.nn.Module,
    examples: Sequence[Any],
    loss_fn: Callable[[torch.nn.Module, list[Any]], torch.Tensor],
    hp: HyperParams,
    deadline: Deadline,
    seed: int,
    step_hint_s: float = 0.0,
    evaluate: Callable[[], float] | None = None,
) -> LoopStats:
    """AdamW over the trainable parameters with warm-up + schedule and gradient accumulation,
    stopping when the planned steps are done or the next micro-step would pass the deadline.

    `loss_fn(model, batch)` returns the mean loss of a micro-batch of examples.
    `evaluate()`: the validation loss of the model as it is now; with hp.eval_every_s > 0 it is
    called every eval_every_s seconds of training (when one more score still fits before the
    deadline) and at the end, the best-scoring weights are restored at the end, and training
    stops after hp.patience scores without improvement (hp.patience > 0).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (was the adapter added?)")
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    total = planned_steps(len(examples), hp)
    scheduler = deadline_schedule(optimizer, hp, total, deadline)
    guard = DeadlineGuard(deadline, step_hint_s)
    stats = LoopStats()
    started = time.time()
    order_rng = random.Random(seed)
    pending = 0  # micro-batches accumulated since the last optimiser step

    def optimiser_step() -> None:
        nonlocal pending
        torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stats.steps += 1
        pending = 0

    monitor = evaluate if evaluate is not None and hp.eval_every_s > 0 else None
    best: dict[str, torch.Tensor] | None = None
    best_val = math.inf
    bad = 0
    eval_s = 0.0  # the longest score seen
    last_eval = started
    scored_at_step = -1  # the step count when the weights were last scored

    def score() -> None:
        nonlocal best, best_val, bad, eval_s, last_eval, scored_at_step
        scored_at_step = stats.steps
        assert monitor is not None
        t0 = time.time()
        value = monitor()
        model.train()
        now = time.time()
        eval_s = max(eval_s, now - t0)
        last_eval = now
        stats.evals.append((now, value))
        if math.isfinite(value) and value < best_val:
            best_val, bad = value, 0
            best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            bad += 1

    model.train()
    while stats.steps < total and not guard.stopped_by_deadline and not stats.early_stopped:
        order = list(range(len(examples)))
        order_rng.shuffle(order)
        for start in range(0, len(order), hp.batch_size):
            if stats.steps >= total or guard.should_stop():
                break
            guard.step_started()
            batch = [examples[i] for i in order[start : start + hp.batch_size]]
            loss = loss_fn(model, batch)
            (loss / hp.grad_accum).backward()
            stats.losses.append(float(loss.detach()))
            stats.lrs.append(float(optimizer.param_groups[0]["lr"]))
            stats.micro_steps += 1
            pending += 1
            if pending == hp.grad_accum:
                optimiser_step()
            guard.step_finished()
            if (
                monitor is not None
                and pending == 0
                and time.time() - last_eval >= hp.eval_every_s
                and time.time() + eval_s + guard.step_estimate() < deadline.training_end
            ):
                score()
                if hp.patience and bad >= hp.patience:
                    stats.early_stopped = True
                    break
    if pending:  # a partial accumulation at the end of the data or at the deadline
        optimiser_step()
    if monitor is not None:
        if stats.steps and stats.steps != scored_at_step:
            score()  # the final weights too (the caller leaves time for one validation)
        if best is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in best:
                        p.copy_(best[n])
            stats.best_val = best_val
    stats.stopped_by_deadline = guard.stopped_by_deadline
    stats.seconds = time.time() - started
    stats.step_seconds = guard.step_estimate() if stats.micro_steps else 0.0
    model.eval()
    return stats


def split_validation(
    rows: Sequence[dict], seed: int, max_rows: int, fraction: float = 0.1
) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded `fraction` of the rows, at least 1 and at most max_rows.

    With fewer than 2 rows nothing can be held out; the single row serves both roles.
    """
    rows = list(rows)
    if len(rows) < 2:
        return rows, rows
    n_val = min(max_rows, max(1, round(len(rows) * fraction)), len(rows) - 1)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val
