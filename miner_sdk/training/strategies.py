"""Named training strategies and the `train` entry point a miner calls after accepting a task.

- autotrain-default: one run with HuggingFace AutoTrain's defaults, on all rows.
- lr-sweep: the time budget split over trials at learning rates around the default, each
  scored on a held-out slice of the training split; the best adapter is kept.
- random-search: seeded random learning rate / LoRA rank / length trials, scored the same way.

Every trial ends before its share of the budget, and the last one before
`deadline.training_end`, leaving the upload margin for saving and uploading. The kept
adapter was trained without the held-out slice (there is no time to retrain on everything).
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from miner_sdk.training.common import (
    HyperParams,
    TaskTrainer,
    TaskType,
    TrialOutcome,
    split_validation,
)
from miner_sdk.training.deadline import Deadline, DeadlinePassed

# Share of a trial's time slice kept back for saving its adapter on top of its measured
# validation time (and the minimum kept, in seconds).
SAVE_RESERVE_FRACTION = 0.05
SAVE_RESERVE_MIN_S = 0.2
# Validation scoring usually takes about as long as it took on the base; allow for slack.
VALIDATION_SLACK = 1.5

ProposeFn = Callable[[HyperParams, random.Random], list[HyperParams]]


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    holdout: bool  # score trials on a held-out slice of the training split
    propose: ProposeFn  # the trials to run, from the task's defaults and a seeded rng


@dataclass
class TrainResult:
    adapter_dir: Path
    trials: list[TrialOutcome]
    best_val_loss: float | None  # None when nothing was held out (autotrain-default)
    seconds: float
    base_val_loss: float | None = None  # the untouched base on the same held-out slice
    best_trial: int = 0


def autotrain_default(defaults: HyperParams, rng: random.Random) -> list[HyperParams]:
    return [defaults]


LR_SWEEP_FACTORS = (0.3, 1.0, 3.0, 10.0, 30.0)  # x the default lr: 1e-5 .. 9e-4 for text


def lr_sweep(defaults: HyperParams, rng: random.Random) -> list[HyperParams]:
    return [replace(defaults, learning_rate=defaults.learning_rate * f) for f in LR_SWEEP_FACTORS]


RANDOM_SEARCH_TRIALS = 4
RANDOM_SEARCH_LR_RANGE = (1 / 3, 30.0)  # x the default lr, sampled log-uniformly
RANDOM_SEARCH_RANKS = (4, 8, 16, 32)
RANDOM_SEARCH_LENGTHS = (1, 2, 3)  # x the default epochs (and max_steps when it is set)


def random_search(defaults: HyperParams, rng: random.Random) -> list[HyperParams]:
    low, high = (math.log(defaults.learning_rate * f) for f in RANDOM_SEARCH_LR_RANGE)
    trials = []
    for _ in range(RANDOM_SEARCH_TRIALS):
        rank = rng.choice(RANDOM_SEARCH_RANKS)
        length = rng.choice(RANDOM_SEARCH_LENGTHS)
        trials.append(
            replace(
                defaults,
                learning_rate=math.exp(rng.uniform(low, high)),
                lora_r=rank,
                lora_alpha=2 * rank,
                epochs=defaults.epochs * length,
                max_steps=defaults.max_steps * length if defaults.max_steps > 0 else -1,
            )
        )
    return trials


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "autotrain-default",
            "AutoTrain's defaults, one run on all rows",
            False,
            autotrain_default,
        ),
        Strategy(
            "lr-sweep", "learning rates 0.3x-30x the default, best on held-out rows", True, lr_sweep
        ),
        Strategy(
            "random-search",
            "seeded random lr/rank/length trials, best on held-out rows",
            True,
            random_search,
        ),
    )
}


def task_trainer(
    task_type: TaskType, rewards: Sequence[Any] | None, image_root: str | Path | None
) -> TaskTrainer:
    # Imported here so a miner that only trains images never imports trl, and vice versa.
    if task_type in (TaskType.INSTRUCT, TaskType.CHAT):
        from miner_sdk.training.sft import SftTrainer

        return SftTrainer()
    if task_type is TaskType.DPO:
        from miner_sdk.training.dpo import DpoTrainer

        return DpoTrainer()
    if task_type is TaskType.GRPO:
        from miner_sdk.training.grpo import GrpoTrainer

        return GrpoTrainer(rewards)
    from miner_sdk.training.image import ImageTrainer

    return ImageTrainer(image_root)


def train(
    strategy_name: str,
    task_type: str | TaskType,
    base_model_dir: str | Path,
    train_rows: Sequence[dict],
    out_dir: str | Path,
    deadline: Deadline,
    seed: int = 0,
    *,
    overrides: Mapping[str, Any] | None = None,
    rewards: Sequence[Any] | None = None,
    image_root: str | Path | None = None,
) -> TrainResult:
    """Train with a named strategy; the kept adapter ends up in `out_dir/adapter`.

    overrides: HyperParams fields set on the task's defaults before the strategy varies them
    (e.g. a shorter max_length). rewards: GRPO `RewardSpec`s (default: from the columns).
    image_root: where relative image paths of image rows live.
    """
    started = time.time()
    if strategy_name not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy_name!r}; known: {sorted(STRATEGIES)}")
    if deadline.expired(started):
        raise DeadlinePassed(
            f"the training time ran out {-deadline.remaining(started):.1f}s before training began"
        )
    strategy = STRATEGIES[strategy_name]
    task = task_trainer(TaskType.parse(task_type), rewards, image_root)
    defaults = task.default_hparams()
    if overrides:
        unknown = sorted(set(overrides) - set(HyperParams.__dataclass_fields__))
        if unknown:
            raise ValueError(f"overrides name unknown HyperParams field(s) {unknown}")
        defaults = replace(defaults, **overrides)
    candidates = strategy.propose(defaults, random.Random(seed))
    out = Path(out_dir)

    base = task.load(Path(base_model_dir))
    if strategy.holdout:
        fit_rows, val_rows = split_validation(train_rows, seed, task.max_val_rows)
    else:
        fit_rows, val_rows = list(train_rows), []
    base_val_loss, validation_s = None, 0.0
    if val_rows:
        t0 = time.time()
        base_val_loss = task.validation_loss(base, val_rows, defaults)
        validation_s = time.time() - t0

    trials: list[TrialOutcome] = []
    overhead_s = 0.0  # longest setup + saving + scoring seen in a trial
    step_s = 0.0  # longest step seen in a trial
    for index, hp in enumerate(candidates):
        now = time.time()
        remaining = deadline.remaining(now)
        if trials and remaining < overhead_s + step_s:
            break  # no room left for a trial that takes even one step
        # An equal share of what is left, so time a trial did not use goes to the next ones.
        slice_s = max(0.0, remaining) / (len(candidates) - index)
        reserve = max(
            overhead_s,
            VALIDATION_SLACK * validation_s
            + max(SAVE_RESERVE_MIN_S, SAVE_RESERVE_FRACTION * slice_s),
        )
        trial_deadline = deadline.until(now + max(0.0, slice_s - reserve))
        trial_dir = out / "trials" / f"{index:02d}"
        shutil.rmtree(trial_dir, ignore_errors=True)  # no stale files from an earlier run
        run = task.run_trial(
            base, fit_rows, val_rows, hp, trial_dir, trial_deadline, seed + index, step_s
        )
        seconds = time.time() - now
        overhead_s = max(overhead_s, seconds - run.train_seconds)
        step_s = max(step_s, run.step_seconds)
        trials.append(
            TrialOutcome(
                index, hp, trial_dir, run.val_loss, run.steps, seconds, run.stopped_by_deadline
            )
        )

    scored = [t for t in trials if t.val_loss is not None and math.isfinite(t.val_loss)]
    best = min(scored, key=lambda t: t.val_loss) if scored else trials[0]
    adapter_dir = out / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    shutil.copytree(best.adapter_dir, adapter_dir)
    return TrainResult(
        adapter_dir=adapter_dir,
        trials=trials,
        best_val_loss=best.val_loss,
        seconds=time.time() - started,
        base_val_loss=base_val_loss,
        best_trial=best.index,
    )
