"""Named training strategies and the `train` entry point a miner calls after accepting a task.

- autotrain-default: one run with HuggingFace AutoTrain's defaults, on all rows (it stops when
  its one epoch is done: that is what AutoTrain does).
- lr-sweep: learning rates around the default, each scored on a held-out slice of the training
  split; the best adapter is kept and trained on until the deadline.
- random-search: seeded random learning rate / LoRA rank / length trials, scored the same way,
  the best trained on until the deadline.
- lr-range-cosine: an LR range test (a short exponential ramp of the learning rate; the pick
  is where the smoothed loss falls fastest), then one cosine schedule to the deadline with
  sequence packing and early stopping on the held-out slice (the best weights are kept), then
  continued training of the best adapter at a lower rate while time is left.
- successive-halving: seeded configurations over (lr, rank, alpha, dropout, target modules,
  epochs); every rung trains the survivors on (from their own adapters) and keeps the better
  half on the held-out slice, until one is left; that one trains on to the deadline with early
  stopping and packing.

Every trial ends before its share of the budget, and the last one before
`deadline.training_end`, leaving the upload margin for saving and uploading. No strategy but
autotrain-default idles: time a search did not use goes to training its best adapter further.
The kept adapter was trained without the held-out slice (there is no time to retrain on
everything). lr-range-cosine and successive-halving train instruct, chat and DPO tasks; for
GRPO and image tasks they fall back to lr-sweep and say so (`TrainResult.note`, a warning).
Torch uses every core of the machine unless OMP_NUM_THREADS (or `threads`) says otherwise
(`configure_threads`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from miner_sdk.training import tuning
from miner_sdk.training.common import (
    HyperParams,
    TaskTrainer,
    TaskType,
    TrialOutcome,
    split_validation,
)
from miner_sdk.training.deadline import Deadline, DeadlinePassed

log = logging.getLogger(__name__)

# Share of a trial's time slice kept back for saving its adapter on top of its measured
# validation time (and the minimum kept, in seconds).
SAVE_RESERVE_FRACTION = 0.05
SAVE_RESERVE_MIN_S = 0.2
# Validation scoring usually takes about as long as it took on the base; allow for slack.
VALIDATION_SLACK = 1.5
RESERVE_MAX_SHARE = 0.5  # of a trial's slice, at most, kept back for saving and scoring
# Task types whose trainers can continue a saved adapter and stop early (sft.py, dpo.py).
CONTINUABLE = frozenset({TaskType.INSTRUCT, TaskType.CHAT, TaskType.DPO})
PACKABLE = frozenset({TaskType.INSTRUCT, TaskType.CHAT})

ProposeFn = Callable[[HyperParams, random.Random], list[HyperParams]]


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    holdout: bool  # score trials on a held-out slice of the training split
    propose: ProposeFn | None = None  # the trials to run, from the task's defaults and a seeded rng
    search: Callable[[Session], None] | None = None  # a deadline-aware program over a Session
    extend: bool = True  # train the best adapter on while time is left (task types that can)
    task_types: frozenset[TaskType] | None = None  # None: every type; else others use `fallback`
    fallback: str = "lr-sweep"


@dataclass
class TrainResult:
    adapter_dir: Path
    trials: list[TrialOutcome]
    best_val_loss: float | None  # None when nothing was held out (autotrain-default)
    seconds: float
    base_val_loss: float | None = None  # the untouched base on the same held-out slice
    best_trial: int = 0
    # (seconds since train() began, validation loss, trial label): every score the strategy
    # took on its held-out slice, the base's at 0 first.
    history: list[tuple[float, float, str]] = field(default_factory=list)
    strategy: str = ""  # the strategy that ran (the fallback's name when one was used)
    note: str = ""


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


class Session:
    """One `train` call's state: the loaded base, the rows, the deadline and the trials so far.

    `run` gives a trial at most `seconds` (never past the deadline), keeping back time to save
    and score it; `fits` says whether a trial of a few steps still fits.
    """

    def __init__(
        self,
        task: TaskTrainer,
        task_type: TaskType,
        base: Any,
        fit_rows: Sequence[dict],
        val_rows: Sequence[dict],
        defaults: HyperParams,
        deadline: Deadline,
        seed: int,
        out: Path,
        started: float,
    ) -> None:
        self.task, self.task_type, self.base = task, task_type, base
        self.fit_rows, self.val_rows = fit_rows, val_rows
        self.defaults, self.deadline, self.seed, self.out = defaults, deadline, seed, out
        self.started = started
        self.rng = random.Random(seed)
        self.trials: list[TrialOutcome] = []
        self.overhead_s = 0.0  # longest setup + saving + scoring seen in a trial
        self.step_s = 0.0  # longest step seen in a trial
        self.validation_s = 0.0  # one score of the held-out slice
        self.base_val_loss: float | None = None
        self.history: list[tuple[float, float, str]] = []

    def measure_base(self) -> None:
        if self.val_rows:
            t0 = time.time()
            self.base_val_loss = self.task.validation_loss(self.base, self.val_rows, self.defaults)
            self.validation_s = time.time() - t0
            self.history.append((0.0, self.base_val_loss, "base"))

    @property
    def continuable(self) -> bool:
        return self.task_type in CONTINUABLE

    @property
    def packable(self) -> bool:
        return self.task_type in PACKABLE

    def remaining(self) -> float:
        return self.deadline.remaining()

    def fits(self, steps: int = 1) -> bool:
        """Whether a trial of `steps` steps (plus its setup, saving and scoring) still fits."""
        if not self.trials:
            return self.remaining() > 0
        return self.remaining() > self.overhead_s + steps * self.step_s

    def min_trial_s(self, steps: int = 4) -> float:
        """The shortest trial worth starting: its reserve for saving and scoring twice over,
        plus the setup and `steps` steps seen so far."""
        reserve = VALIDATION_SLACK * self.validation_s + SAVE_RESERVE_MIN_S
        return 2 * reserve + self.overhead_s + steps * self.step_s

    def run(
        self,
        hp: HyperParams,
        seconds: float,
        *,
        init: TrialOutcome | None = None,
        label: str = "",
        score: bool = True,
    ) -> TrialOutcome:
        now = time.time()
        slice_s = max(0.0, min(seconds, self.deadline.remaining(now)))
        validation = VALIDATION_SLACK * self.validation_s if score else 0.0
        reserve = max(self.overhead_s, validation + max(SAVE_RESERVE_MIN_S, SAVE_RESERVE_FRACTION * slice_s))
        # A trial always trains for at least half its slice: a first score slowed by warm-up
        # (or a loaded machine) must not leave every trial without a single step.
        reserve = min(reserve, RESERVE_MAX_SHARE * slice_s)
        trial_deadline = self.deadline.until(now + max(0.0, slice_s - reserve))
        index = len(self.trials)
        trial_dir = self.out / "trials" / f"{index:02d}"
        shutil.rmtree(trial_dir, ignore_errors=True)  # no stale files from an earlier run
        extra: dict[str, Any] = {"init_adapter": init.adapter_dir} if init is not None else {}
        run = self.task.run_trial(
            self.base,
            self.fit_rows,
            self.val_rows if score else [],
            hp,
            trial_dir,
            trial_deadline,
            self.seed + index,
            self.step_s,
            **extra,
        )
        seconds_taken = time.time() - now
        self.overhead_s = max(self.overhead_s, seconds_taken - run.train_seconds)
        self.step_s = max(self.step_s, run.step_seconds)
        outcome = TrialOutcome(
            index,
            hp,
            trial_dir,
            run.val_loss,
            run.steps,
            seconds_taken,
            run.stopped_by_deadline,
            label=label,
            init_from=init.index if init is not None else None,
            run=run,
        )
        self.trials.append(outcome)
        name = label or f"trial {index}"
        for at, value in run.evals:
            self.history.append((at - self.started, value, name))
        if run.val_loss is not None and not run.evals:
            self.history.append((time.time() - self.started, run.val_loss, name))
        return outcome

    def best(self) -> TrialOutcome | None:
        scored = [t for t in self.trials if t.val_loss is not None and math.isfinite(t.val_loss)]
        return min(scored, key=lambda t: (t.val_loss, t.index)) if scored else None

    def eval_interval(self) -> float:
        """Seconds of training between two scores of the held-out slice in early stopping:
        scoring costs at most about a fifth of the training time, and happens about 8 times
        over what is left."""
        return max(EARLY_STOP_COST_RATIO * self.validation_s, self.remaining() / EARLY_STOP_SCORES, 0.5)


EARLY_STOP_COST_RATIO = 5.0  # train >= 5x as long as a score takes between two scores
EARLY_STOP_SCORES = 8
EARLY_STOP_PATIENCE = 3
CONTINUE_LR_FACTORS = (0.5, 0.25, 0.1)  # x the best trial's lr, for each further continuation


def keep_improving(session: Session) -> None:
    """Train the best adapter on while time is left: a cosine schedule over what is left,
    early stopping on the held-out slice (its best weights are kept), at a lower learning
    rate each time. A continuation that does not beat the best leaves the best as it was."""
    if not session.continuable or not session.val_rows:
        return
    rounds = 0
    while session.fits(steps=4) and session.remaining() > 3 * session.validation_s:
        best = session.best()
        if best is None:
            return
        factor = CONTINUE_LR_FACTORS[min(rounds, len(CONTINUE_LR_FACTORS) - 1)]
        hp = replace(
            best.hparams,
            learning_rate=best.hparams.learning_rate * factor,
            scheduler="cosine",
            warmup_ratio=0.0,
            epochs=1000.0,
            max_steps=-1,
            lr_end_factor=1.0,
            eval_every_s=session.eval_interval(),
            patience=EARLY_STOP_PATIENCE,
        )
        if hp.scheduler == "exponential":  # never continue a ramp
            hp = replace(hp, scheduler="cosine")
        session.run(hp, session.remaining(), init=best, label=f"continue best x{factor:g} lr")
        rounds += 1


def run_proposals(strategy: Strategy, session: Session) -> None:
    """The classic loop: the proposed trials, each an equal share of what is left."""
    assert strategy.propose is not None
    candidates = strategy.propose(session.defaults, random.Random(session.seed))
    for index, hp in enumerate(candidates):
        if session.trials and not session.fits(steps=1):
            break  # no room left for a trial that takes even one step
        remaining = max(0.0, session.remaining())
        # An equal share of what is left, so time a trial did not use goes to the next ones;
        # but never a share too small to train at all (then fewer trials run).
        fitting = max(1, int(remaining // session.min_trial_s()))
        slice_s = remaining / min(len(candidates) - index, fitting)
        session.run(hp, slice_s, label=f"trial {index}", score=bool(session.val_rows))


# ---- lr-range-cosine --------------------------------------------------------------------

RAMP_LR_MIN, RAMP_LR_MAX = 1e-5, 1e-2
RAMP_SHARE = 0.2  # of the budget for the range test
RAMP_STEPS_RANGE = (6, 20)
RAMP_BATCH = 4
RAMP_FALLBACK_FACTOR = 10.0  # x the default lr when no range test fits
MAIN_GRAD_ACCUM = 2


def ramp_steps(seconds: float, step_estimate_s: float) -> int:
    low, high = RAMP_STEPS_RANGE
    if step_estimate_s <= 0:
        return 12
    return int(min(high, max(low, seconds // step_estimate_s)))


def estimated_step_s(session: Session, batch: int) -> float:
    """A training step of `batch` rows costs about 3 forward passes of them; the base's
    validation score timed one forward pass of the held-out rows."""
    if not session.val_rows or session.validation_s <= 0:
        return 0.0
    return 3.0 * session.validation_s * batch / len(session.val_rows)


def ramp_lr(session: Session, ramp_s: float) -> float:
    """The LR range test's pick, or RAMP_FALLBACK_FACTOR x the default lr when the ramp cannot
    take RAMP_STEPS_RANGE[0] steps in ramp_s (then it would only sample its lowest rates, and
    the pick would say nothing; the time goes to the main run instead)."""
    d = session.defaults
    fallback = d.learning_rate * RAMP_FALLBACK_FACTOR
    estimate = estimated_step_s(session, RAMP_BATCH)
    if estimate > 0 and RAMP_STEPS_RANGE[0] * estimate > ramp_s:
        log.info("lr-range-cosine: no room for an LR range test; lr %.1e", fallback)
        return fallback
    n = ramp_steps(ramp_s, estimate)
    ramp_hp = replace(
        d,
        learning_rate=RAMP_LR_MIN,
        lr_end_factor=RAMP_LR_MAX / RAMP_LR_MIN,
        scheduler="exponential",
        warmup_ratio=0.0,
        batch_size=RAMP_BATCH,
        grad_accum=1,
        epochs=1000.0,
        max_steps=n,
        packing=False,
        eval_every_s=0.0,
    )
    ramp = session.run(ramp_hp, ramp_s, label="lr range test", score=False)
    losses = ramp.run.losses if ramp.run else []
    lrs = ramp.run.lrs if ramp.run else []
    if len(losses) < RAMP_STEPS_RANGE[0]:  # cut short by the deadline: the low end only
        return fallback
    return tuning.steepest_descent_lr(lrs, losses)


def lr_range_cosine(session: Session) -> None:
    d = session.defaults
    lr = ramp_lr(session, RAMP_SHARE * session.remaining())
    main = replace(
        d,
        learning_rate=lr,
        scheduler="cosine",
        warmup_ratio=0.05,
        grad_accum=MAIN_GRAD_ACCUM,
        epochs=1000.0,
        max_steps=-1,
        packing=session.packable,
        eval_every_s=session.eval_interval(),
        patience=EARLY_STOP_PATIENCE,
    )
    session.run(main, session.remaining(), label=f"cosine from {lr:.1e}")


# ---- successive-halving -------------------------------------------------------------------

HALVING_ETA = 2
HALVING_SHARE = 0.75  # of the budget for the rungs; the rest trains the survivor on
HALVING_CONFIGS = (8, 4, 2)  # the most that fit (scoring at most HALVING_SCORE_SHARE of the time)
HALVING_SCORE_SHARE = 0.3
HALVING_LR_RANGE = (1e-4, 3e-3)
HALVING_RANKS = (4, 8, 16, 32)
HALVING_ALPHA_FACTORS = (1, 2, 4)
HALVING_DROPOUTS = (0.0, 0.05, 0.1)
HALVING_TARGETS = ("all-linear", "attention", "mlp")
HALVING_EPOCHS = (1.0, 2.0, 3.0)


def halving_configs(defaults: HyperParams, rng: random.Random, n: int, packing: bool) -> list[HyperParams]:
    low, high = (math.log(v) for v in HALVING_LR_RANGE)
    configs = []
    for _ in range(n):
        rank = rng.choice(HALVING_RANKS)
        configs.append(
            replace(
                defaults,
                learning_rate=math.exp(rng.uniform(low, high)),
                lora_r=rank,
                lora_alpha=rank * rng.choice(HALVING_ALPHA_FACTORS),
                lora_dropout=rng.choice(HALVING_DROPOUTS),
                lora_target=rng.choice(HALVING_TARGETS),
                epochs=rng.choice(HALVING_EPOCHS),
                scheduler="cosine",
                warmup_ratio=0.05,
                grad_accum=MAIN_GRAD_ACCUM,
                max_steps=-1,
                packing=packing,
            )
        )
    return configs


def halving_size(seconds: float, validation_s: float) -> int:
    """The most configurations (of HALVING_CONFIGS) such that their scores (about 2n with eta 2)
    take at most HALVING_SCORE_SHARE of `seconds` and a rung-0 slice is at least 4x a trial's
    reserve for scoring and saving; 1 when not even 2 fit."""
    reserve = VALIDATION_SLACK * validation_s + SAVE_RESERVE_MIN_S
    for n in HALVING_CONFIGS:
        rungs = len(tuning.halving_plan(n, HALVING_ETA, 1.0))
        rung0_slice = HALVING_SHARE * seconds / rungs / n
        if 2 * n * VALIDATION_SLACK * validation_s <= HALVING_SCORE_SHARE * seconds and rung0_slice >= 4 * reserve:
            return n
    return 1


def successive_halving(session: Session) -> None:
    total = session.remaining()
    n = halving_size(total, session.validation_s)
    configs = halving_configs(session.defaults, session.rng, n, session.packable)
    if n == 1:
        log.warning("successive-halving: too little time for several configurations; training one")
        session.run(configs[0], session.remaining(), label="one configuration")
        return
    plan = tuning.halving_plan(n, HALVING_ETA, HALVING_SHARE * total)
    rungs_end = time.time() + HALVING_SHARE * total
    alive = list(range(n))
    latest: dict[int, TrialOutcome] = {}
    planned_left = sum(r.configs * r.seconds_each for r in plan)
    for k, rung in enumerate(plan):
        for i in alive:
            if session.trials and not session.fits(steps=1):
                return
            prior = latest.get(i)
            hp = configs[i] if prior is None else replace(configs[i], warmup_ratio=0.0)
            # The plan's share, scaled to the rungs' time actually left (time a trial did not
            # use goes to the later ones; an overrun is taken from them).
            scale = max(0.0, rungs_end - time.time()) / planned_left if planned_left > 0 else 0.0
            latest[i] = session.run(hp, rung.seconds_each * scale, init=prior, label=f"rung {k} config {i}")
            planned_left -= rung.seconds_each
        keep = plan[k + 1].configs if k + 1 < len(plan) else 1
        alive = [alive[j] for j in tuning.survivors([latest[i].val_loss for i in alive], keep)]


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "autotrain-default",
            "AutoTrain's defaults, one run on all rows",
            False,
            propose=autotrain_default,
            extend=False,
        ),
        Strategy(
            "lr-sweep",
            "learning rates 0.3x-30x the default, best on held-out rows, trained on to the deadline",
            True,
            propose=lr_sweep,
        ),
        Strategy(
            "random-search",
            "seeded random lr/rank/length trials, best on held-out rows, trained on to the deadline",
            True,
            propose=random_search,
        ),
        Strategy(
            "lr-range-cosine",
            "LR range test (steepest descent), then cosine to the deadline with packing and early stopping",
            True,
            search=lr_range_cosine,
            task_types=CONTINUABLE,
        ),
        Strategy(
            "successive-halving",
            "successive halving over lr/rank/alpha/dropout/targets/epochs, the survivor trained on",
            True,
            search=successive_halving,
            task_types=CONTINUABLE,
        ),
    )
}


def configure_threads(threads: int | None = None) -> int:
    """Torch threads for training: `threads`, else OMP_NUM_THREADS when set (a miner sharing
    the machine), else every core this process may run on. Returns the count set."""
    import torch

    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            threads = int(env)
        else:
            try:
                threads = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                threads = os.cpu_count() or 1
    threads = max(1, threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def task_trainer(task_type: TaskType, rewards: Sequence[Any] | None, image_root: str | Path | None) -> TaskTrainer:
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
    threads: int | None = None,
) -> TrainResult:
    """Train with a named strategy; the kept adapter ends up in `out_dir/adapter`.

    overrides: HyperParams fields set on the task's defaults before the strategy varies them
    (e.g. a shorter max_length). rewards: GRPO `RewardSpec`s (default: from the columns).
    image_root: where relative image paths of image rows live. threads: torch threads for
    this training; None leaves torch as it is (its default is every core of the machine, or
    OMP_NUM_THREADS when set, e.g. by a demo running several miners side by side).
    """
    started = time.time()
    if strategy_name not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy_name!r}; known: {sorted(STRATEGIES)}")
    if deadline.expired(started):
        raise DeadlinePassed(f"the training time ran out {-deadline.remaining(started):.1f}s before training began")
    kind = TaskType.parse(task_type)
    strategy = STRATEGIES[strategy_name]
    note = ""
    if strategy.task_types is not None and kind not in strategy.task_types:
        note = f"{strategy.name} does not train {kind.value} tasks: trained with {strategy.fallback} instead"
        log.warning(note)
        strategy = STRATEGIES[strategy.fallback]
    task = task_trainer(kind, rewards, image_root)
    defaults = task.default_hparams()
    if overrides:
        unknown = sorted(set(overrides) - set(HyperParams.__dataclass_fields__))
        if unknown:
            raise ValueError(f"overrides name unknown HyperParams field(s) {unknown}")
        defaults = replace(defaults, **overrides)
    if threads is not None:
        configure_threads(threads)
    out = Path(out_dir)

    base = task.load(Path(base_model_dir))
    if strategy.holdout:
        fit_rows, val_rows = split_validation(train_rows, seed, task.max_val_rows)
    else:
        fit_rows, val_rows = list(train_rows), []
    session = Session(task, kind, base, fit_rows, val_rows, defaults, deadline, seed, out, started)
    session.measure_base()
    if strategy.search is not None:
        strategy.search(session)
    else:
        run_proposals(strategy, session)
    if strategy.extend:
        keep_improving(session)

    trials = session.trials
    best = session.best() or trials[0]
    adapter_dir = out / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    shutil.copytree(best.adapter_dir, adapter_dir)
    return TrainResult(
        adapter_dir=adapter_dir,
        trials=trials,
        best_val_loss=best.val_loss,
        seconds=time.time() - started,
        base_val_loss=session.base_val_loss,
        best_trial=best.index,
        history=session.history,
        strategy=strategy.name,
        note=note,
    )
