"""The paper's claim, measured as a customer would see it: the tournament's winner against one
`autotrain-default` run with the same time budget (paper §5).

Per task (procedurally generated, fixed seeds; instruct families and DPO):

- rows are split four ways, no row in two splits: a held-out split nobody selects on, a slice
  standing in for the synthetic rows (D_synth), and D_train / D_test by the validator's own
  split rule (services.dataset_prep.logic.split_rows);
- a pool of miners (default 8, strategies mixed, seeds fixed) trains on D_train, each with the
  same budget; `autotrain-default` trains separately as the baseline (not a contestant);
- the validator picks the winner as it does: eval_worker's `evaluate_job` on D_test and D_synth,
  then the scorer's ranking (services.scorer.logic.score_task, eqs 9-12);
- the winner, the default and the base model are then scored on the held-out split, and the
  improvement is reported there.

Contestants run one after another, each with all the machine's cores (torch threads = CPU
count), so their budgets are comparable. Prints the per-task table, the win rate, the mean
improvement over the default and over the base; writes a PNG of validation loss against time
per strategy and a JSON of every number.

    python -m benchmarks.tournament_vs_default --model smollm2     # the figure
    python -m benchmarks.tournament_vs_default --model tiny        # a smoke test only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

POOL_STRATEGIES = ("lr-range-cosine", "successive-halving", "lr-sweep", "random-search")
DEFAULT_STRATEGY = "autotrain-default"
DEFAULT_TASKS = "arithmetic,strings,dates,sorting,json,dpo"
TARGET_WIN_RATE = 0.9
TARGET_IMPROVEMENT = 0.10
# Per model: (seconds of training per contestant, rows: train, test, synth, held-out).
PRESETS = {"smollm2": (28.0, 160, 24, 16, 48), "tiny": (3.0, 120, 16, 12, 32)}
# A DPO task's budget, x the instruct one: a DPO step trains on two sequences per row (chosen
# and rejected) and runs the reference model over both first, about 2.5x an SFT step; with the
# instruct budget a SmolLM2 DPO contestant gets one or two optimiser steps on this machine.
DPO_BUDGET_FACTOR = 2.0


@dataclass(frozen=True)
class TaskSpec:
    family: str  # a procedural family, or "dpo"
    seed: int

    @property
    def name(self) -> str:
        return f"{self.family}#{self.seed}"

    @property
    def kind(self) -> str:
        return "dpo" if self.family == "dpo" else "instruct"

    @property
    def eval_type(self) -> str:
        return "DPO" if self.kind == "dpo" else "INSTRUCT_TEXT"


@dataclass
class Splits:
    train: list[dict]
    test: list[dict]
    synth: list[dict]
    heldout: list[dict]


def row_key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


def make_splits(spec: TaskSpec, n_train: int, n_test: int, n_synth: int, n_heldout: int) -> Splits:
    """Distinct rows, split four ways (no row in two splits). The held-out and D_synth slices
    are taken first (seeded); D_train / D_test come from the validator's split rule."""
    from gradients.models import procedural
    from services.dataset_prep.logic import SplitConfig, split_rows

    total = n_train + n_test + n_synth + n_heldout
    if spec.kind == "dpo":
        rows = procedural.distinct(lambda k: procedural.preference_rows(k, spec.seed), total)
    else:
        rows = procedural.generate_distinct(spec.family, total, spec.seed)
    random.Random(f"splits:{spec.name}").shuffle(rows)
    heldout, synth, rest = rows[:n_heldout], rows[n_heldout : n_heldout + n_synth], rows[n_heldout + n_synth :]
    split = split_rows(rest, SplitConfig(test_fraction=n_test / len(rest), synth_fraction=0.0, seed=spec.seed))
    return Splits(train=list(split.train), test=list(split.test), synth=synth, heldout=heldout)


@dataclass
class Contestant:
    name: str
    strategy: str
    seed: int
    adapter_dir: str = ""
    train_seconds: float = 0.0
    history: list[tuple[float, float, str]] = field(default_factory=list)
    trials: int = 0
    note: str = ""
    loss_test: float | None = None
    loss_synth: float | None = None
    loss_weighted: float | None = None
    rank: int = 0
    reason: str = ""


@dataclass
class TaskOutcome:
    task: str
    kind: str
    rows: dict[str, int]
    contestants: list[Contestant]
    default: Contestant
    winner: str
    winner_strategy: str
    base_test: float | None
    heldout_base: float
    heldout_default: float
    heldout_winner: float
    seconds: float

    @property
    def vs_default(self) -> float:
        return (self.heldout_default - self.heldout_winner) / self.heldout_default

    @property
    def vs_base(self) -> float:
        return (self.heldout_base - self.heldout_winner) / self.heldout_base


def task_budget(spec: TaskSpec, budget: float) -> float:
    """Training seconds of each contestant of this task (the same for all of them)."""
    return budget * DPO_BUDGET_FACTOR if spec.kind == "dpo" else budget


def pool(miners: int) -> list[tuple[str, str, int]]:
    """(name, strategy, seed) of the pool: strategies in turn, seeds 0..miners-1."""
    return [(f"miner-{i + 1}", POOL_STRATEGIES[i % len(POOL_STRATEGIES)], i) for i in range(miners)]


def train_one(
    c: Contestant,
    spec: TaskSpec,
    base: Path,
    rows: list[dict],
    work: Path,
    budget: float,
    overrides: dict[str, Any],
    threads: int,
) -> None:
    from miner_sdk.training import Deadline, train

    result = train(
        c.strategy,
        spec.kind,
        base,
        rows,
        work / spec.name / c.name,
        Deadline.after(budget),
        seed=c.seed,
        overrides=overrides,
        threads=threads,
    )
    c.adapter_dir, c.train_seconds = str(result.adapter_dir), result.seconds
    c.history, c.trials, c.note = result.history, len(result.trials), result.note


def run_task(
    spec: TaskSpec,
    base: Path,
    work: Path,
    *,
    miners: int,
    budget: float,
    rows: tuple[int, int, int, int],
    max_length: int,
    threads: int,
    params_b: float,
    log=print,
) -> TaskOutcome:
    from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job
    from services.scorer.logic import SubmissionResult, TaskInfo, score_task

    started = time.monotonic()
    splits = make_splits(spec, *rows)
    overrides = {"max_length": max_length}
    contestants = [Contestant(name, strategy, seed) for name, strategy, seed in pool(miners)]
    default = Contestant("default", DEFAULT_STRATEGY, 0)
    for c in [*contestants, default]:
        train_one(c, spec, base, splits.train, work, task_budget(spec, budget), overrides, threads)
        best = min((v for _, v, _ in c.history), default=math.nan)
        log(
            f"  {spec.name:<12} {c.name:<9} {c.strategy:<19} {c.train_seconds:5.1f}s  {c.trials:2d} trials"
            f"  best own-val {best:.4f}" + (f"  ({c.note})" if c.note else "")
        )

    limits = EvalLimits(isolate=False, torch_threads=threads, max_seq_len=max(max_length, 256))
    job = EvalJob(
        task_id=spec.name,
        task_type=spec.eval_type,
        base_model_dir=str(base),
        test_rows=splits.test,
        synth_rows=splits.synth,
        limits=limits,
    )
    outcome = evaluate_job(job, [Submission(c.name, c.adapter_dir) for c in contestants])
    results = []
    for order, (c, ev) in enumerate(zip(contestants, outcome.results)):
        c.loss_test, c.loss_synth, c.loss_weighted = ev.loss_test, ev.loss_synth, ev.loss_weighted
        results.append(
            SubmissionResult(
                miner_hotkey=c.name,
                valid=ev.ok,
                fail_reason=ev.reason,
                l_test=ev.loss_test,
                l_synth=ev.loss_synth,
                l_weighted=ev.loss_weighted,
                upload_time=float(order),
                upload_seq=order,
                per_example_test=tuple(ev.per_example_test),
                per_example_synth=tuple(ev.per_example_synth),
            )
        )
    scored = score_task(TaskInfo(spec.name, params_b, 1.0, 0.0, loss_test_weight=job.test_weight), results)
    by_name = {c.name: c for c in contestants}
    for line in scored.miners:
        by_name[line.miner_hotkey].rank, by_name[line.miner_hotkey].reason = line.rank, line.reason
    ranked = [m for m in scored.miners if m.rank == 1]
    if not ranked:
        raise RuntimeError(f"{spec.name}: no valid submission to rank ({[c.reason for c in contestants]})")
    winner = by_name[ranked[0].miner_hotkey]

    held = EvalJob(
        task_id=f"{spec.name}/heldout",
        task_type=spec.eval_type,
        base_model_dir=str(base),
        test_rows=splits.heldout,
        limits=limits,
    )
    h = evaluate_job(held, [Submission(winner.name, winner.adapter_dir), Submission(default.name, default.adapter_dir)])
    if not (h.results[0].ok and h.results[1].ok and h.baseline.ok):
        raise RuntimeError(f"{spec.name}: held-out evaluation failed: {[r.reason for r in (*h.results, h.baseline)]}")
    return TaskOutcome(
        task=spec.name,
        kind=spec.kind,
        rows={
            "train": len(splits.train),
            "test": len(splits.test),
            "synth": len(splits.synth),
            "heldout": len(splits.heldout),
        },
        contestants=contestants,
        default=default,
        winner=winner.name,
        winner_strategy=winner.strategy,
        base_test=outcome.baseline.loss_test,
        heldout_base=float(h.baseline.loss_test),
        heldout_default=float(h.results[1].loss_test),
        heldout_winner=float(h.results[0].loss_test),
        seconds=time.monotonic() - started,
    )


def summary_lines(outcomes: list[TaskOutcome]) -> list[str]:
    lines = [
        f"{'task':<13}{'kind':<9}{'base':>8}{'default':>9}  {'winner':<28}{'loss':>8}{'vs default':>12}{'vs base':>9}"
    ]
    for o in outcomes:
        who = f"{o.winner} ({o.winner_strategy})"
        lines.append(
            f"{o.task:<13}{o.kind:<9}{o.heldout_base:>8.4f}{o.heldout_default:>9.4f}  {who:<28}"
            f"{o.heldout_winner:>8.4f}{o.vs_default:>12.1%}{o.vs_base:>9.1%}"
        )
    wins = sum(1 for o in outcomes if o.heldout_winner < o.heldout_default)
    rate = wins / len(outcomes)
    mean_default = statistics.fmean(o.vs_default for o in outcomes)
    mean_base = statistics.fmean(o.vs_base for o in outcomes)
    lines.append(
        f"win rate (winner's held-out loss strictly below autotrain-default's): {wins}/{len(outcomes)} = {rate:.1%}"
    )
    lines.append(
        f"mean relative improvement on the held-out split: {mean_default:.1%} over autotrain-default, "
        f"{mean_base:.1%} over the base model"
    )
    lines.append(
        "base model's held-out loss per task: " + ", ".join(f"{o.task} {o.heldout_base:.4f}" for o in outcomes)
    )
    short = []
    if rate < TARGET_WIN_RATE:
        short.append(f"win rate {rate:.1%} is {TARGET_WIN_RATE - rate:.1%} short of {TARGET_WIN_RATE:.0%}")
    if mean_default < TARGET_IMPROVEMENT:
        short.append(
            f"mean improvement {mean_default:.1%} is {TARGET_IMPROVEMENT - mean_default:.1%} "
            f"(percentage points) short of {TARGET_IMPROVEMENT:.0%}"
        )
    if len(outcomes) < 6:
        short.append(f"only {len(outcomes)} tasks (the target is over >= 6)")
    lines.append(
        f"target (win rate >= {TARGET_WIN_RATE:.0%}, mean improvement >= {TARGET_IMPROVEMENT:.0%} over "
        f">= 6 tasks): " + ("MET" if not short else "NOT MET: " + "; ".join(short))
    )
    return lines


def plot(outcomes: list[TaskOutcome], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {s: f"C{i}" for i, s in enumerate(POOL_STRATEGIES)}
    cols = min(3, len(outcomes))
    rows = math.ceil(len(outcomes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, o in zip(axes.flat, outcomes):
        seen: set[str] = set()
        for c in o.contestants:
            points = sorted((t, v) for t, v, _ in c.history if math.isfinite(v))
            if not points:
                continue
            best, xs, ys = math.inf, [], []
            for t, v in points:  # the best so far: what the miner would upload at that time
                best = min(best, v)
                xs.append(t)
                ys.append(best)
            label = c.strategy if c.strategy not in seen else None
            seen.add(c.strategy)
            ax.step(xs, ys, where="post", color=colours.get(c.strategy, "k"), alpha=0.8, label=label)
        ax.axhline(o.heldout_default, color="k", ls="--", lw=1, label="autotrain-default (held-out)")
        ax.axhline(o.heldout_base, color="grey", ls=":", lw=1, label="base (held-out)")
        ax.set_title(f"{o.task}: winner {o.winner_strategy}, {o.vs_default:+.0%} vs default")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("validation loss (own slice of D_train)")
    for ax in list(axes.flat)[len(outcomes) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_base(model: str, cache: Path) -> tuple[Path, float]:
    if model == "tiny":
        from gradients.models.tiny import build_tiny_llama

        path = cache / "tiny-llama"
        if not (path / "config.json").exists():
            build_tiny_llama(path)
    else:
        from gradients.models.smollm2 import export_smollm2

        path = export_smollm2(cache / "smollm2-135m")
    cfg = json.loads((path / "config.json").read_text())
    h, i, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    return path, (n * (4 * h * h + 3 * h * i) + v * h) / 1e9


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=tuple(PRESETS), default="tiny")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per contestant")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated families (and dpo)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed of every task")
    parser.add_argument("--miners", type=int, default=8, help="pool miners per task (plus the default)")
    for name in ("train", "test", "synth", "heldout"):
        parser.add_argument(f"--{name}-rows", type=int, default=None, help=f"{name} rows per task (preset by --model)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--cache", type=Path, default=Path(".data/benchmarks"), help="where base models are kept")
    parser.add_argument("--out", type=Path, default=Path(".data/benchmarks/tournament"), help="plot, JSON, adapters")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    preset = PRESETS[args.model]
    args.budget = args.budget if args.budget is not None else preset[0]
    for name, index in (("train", 1), ("test", 2), ("synth", 3), ("heldout", 4)):
        attr = f"{name}_rows"
        if getattr(args, attr) is None:
            setattr(args, attr, preset[index])
    return args


def main(argv: list[str] | None = None) -> list[TaskOutcome]:
    started = time.monotonic()
    args = parse_args(argv)
    from miner_sdk.training.strategies import configure_threads

    threads = configure_threads(args.threads or cores())
    # Import the trainers before any deadline starts: the first contestant must not pay for it.
    import miner_sdk.training.dpo  # noqa: F401
    import miner_sdk.training.sft  # noqa: F401

    specs = [TaskSpec(f.strip(), args.seed) for f in args.tasks.split(",") if f.strip()]
    base, params_b = build_base(args.model, args.cache)
    contestants = len(specs) * (args.miners + 1)
    training_s = sum(task_budget(spec, args.budget) for spec in specs) * (args.miners + 1)
    print(
        f"model {args.model}; {len(specs)} tasks x ({args.miners} pool miners + 1 autotrain-default) = "
        f"{contestants} contestants, {args.budget:.0f}s of training each ({DPO_BUDGET_FACTOR:g}x for DPO tasks; "
        f"about {training_s / 60:.0f} min of training, plus loading and evaluation)"
    )
    print(
        f"contestants run one after another, each with all {threads} torch threads of this machine's "
        f"{cores()} cores; pool strategies {', '.join(POOL_STRATEGIES)} in turn, seeds 0..{args.miners - 1}"
    )
    print(
        f"rows per task: train {args.train_rows}, D_test {args.test_rows}, D_synth stand-in {args.synth_rows}, "
        f"held-out {args.heldout_rows} (no row in two splits); max_length {args.max_length}"
    )
    rows = (args.train_rows, args.test_rows, args.synth_rows, args.heldout_rows)
    work = args.out / "runs"
    outcomes = []
    for spec in specs:
        o = run_task(
            spec,
            base,
            work,
            miners=args.miners,
            budget=args.budget,
            rows=rows,
            max_length=args.max_length,
            threads=threads,
            params_b=params_b,
        )
        outcomes.append(o)
        print(
            f"{o.task}: winner {o.winner} ({o.winner_strategy}) by the validator's ranking on D_test + D_synth; "
            f"held-out loss {o.heldout_winner:.4f} vs default {o.heldout_default:.4f} vs base "
            f"{o.heldout_base:.4f} ({o.seconds:.0f}s)",
            flush=True,
        )
    print()
    print(
        "winner = rank 1 of the scorer (eq 11 on L_weighted over D_test and D_synth); losses below are on the "
        "held-out split nobody selected on (completion-token cross-entropy; DPO: the DPO loss against the base, "
        "base = log 2); lower is better"
    )
    for line in summary_lines(outcomes):
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / f"tournament-{args.model}.json"
    record.write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "tasks": [asdict(o) for o in outcomes]}, indent=1
        )
    )
    print(f"numbers: {record}")
    if not args.no_plot:
        print(f"plot: {plot(outcomes, args.out / f'tournament-{args.model}.png')}")
    print(f"total {time.monotonic() - started:.0f}s")
    return outcomes


if __name__ == "__main__":
    main()
