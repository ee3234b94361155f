"""Tournament winner vs one `autotrain-default` run with the same time budget (paper §5).

For each procedurally generated instruct task (fixed seeds): every reference strategy trains
with the same budget (the tournament), the validator's own evaluation (eval_worker's
`evaluate_job`, completion-token cross-entropy on the held-out test rows) scores them, and the
winner's test loss is compared with the `autotrain-default` run's. Prints the per-task table,
the win rate and the mean relative improvement (the paper's headline metric).

    python -m benchmarks.tournament_vs_default --model tiny --budget 20
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

STRATEGIES = ("autotrain-default", "lr-sweep", "random-search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--budget", type=float, default=20.0, help="training seconds per strategy per task")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--tasks", default="arithmetic,strings,recall")
    parser.add_argument("--seeds", type=int, default=1, help="tasks per family (different dataset seeds)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from gradients.models import procedural
    from miner_sdk.training import Deadline, train
    from services.eval_worker.job import EvalJob, EvalLimits, Submission, evaluate_job

    work = Path(tempfile.mkdtemp(prefix="tournament-"))
    if args.model == "tiny":
        from gradients.models.tiny import build_tiny_llama

        base = build_tiny_llama(work / "base")
    else:
        from gradients.models.smollm2 import export_smollm2

        base = export_smollm2(work / "smollm2")

    rows_out = []
    for family in [f.strip() for f in args.tasks.split(",") if f.strip()]:
        for seed in range(args.seeds):
            rows = procedural.generate(family, args.rows, seed)
            random.Random(seed).shuffle(rows)
            n_test = max(1, len(rows) // 10)
            test, train_rows = rows[:n_test], rows[n_test:]
            losses = {}
            for _, strategy in enumerate(STRATEGIES):
                out = work / f"{family}-{seed}-{strategy}"
                result = train(strategy, "instruct", base, train_rows, out, Deadline.after(args.budget), seed=seed)
                job = EvalJob(task_id=f"{family}-{seed}", task_type="INSTRUCT_TEXT", base_model_dir=str(base),
                              test_rows=test, limits=EvalLimits(isolate=False, torch_threads=1))
                (evaluation,) = evaluate_job(job, [Submission(strategy, str(result.adapter_dir))]).results
                losses[strategy] = evaluation.loss_test
            default = losses["autotrain-default"]
            winner = min(losses, key=losses.get)
            improvement = (default - losses[winner]) / default
            rows_out.append((f"{family}#{seed}", default, winner, losses[winner], improvement))

    print(f"model {args.model}, budget {args.budget:.0f}s per strategy, {args.rows} rows per task, "
          f"test = 10% held out, loss = completion-token cross-entropy (lower is better)")
    print(f"{'task':<14}{'default loss':>14}  {'winner':<18}{'winner loss':>12}{'improvement':>13}")
    for name, default, winner, loss, imp in rows_out:
        print(f"{name:<14}{default:>14.4f}  {winner:<18}{loss:>12.4f}{imp:>12.1%}")
    wins = sum(1 for *_, imp in rows_out if imp > 0)
    print(f"win rate (winner strictly better than autotrain-default): {wins}/{len(rows_out)} = {wins / len(rows_out):.1%}")
    print(f"mean relative improvement: {statistics.fmean(imp for *_, imp in rows_out):.1%}")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"total {time.monotonic() - started:.0f}s")
