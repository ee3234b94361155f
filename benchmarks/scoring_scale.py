"""Full scoring recompute at scale: 256 miners × 10,000 tasks inside the 7-day window.

    python -m benchmarks.scoring_scale [--miners 256] [--tasks 10000] [--repeats 5]

Two pools per task:
  - full: every miner in every task (2.56 M rows): the worst case;
  - pool: 8–25 miners per task, as the selector assigns them (SPEC step 4).
Times (median of --repeats, seconds): `build` = scored-task records → columnar table (canonical
sort + dedupe); `recompute` = eqs 13–15 + digest from the table; `replay` = both, what an auditor runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from services.scorer.logic import ScoredTask, build_score_table, recompute, replay
from services.scorer.scoring_config import DAY_S, ScoringConfig

NOW = 1_800_000_000.0
ADJUSTED = (3.0, 0.0, 0.0, 0.0, -1.0)  # S_task values, multiplied by a per-task W_task below


def make_records(n_miners: int, n_tasks: int, pool: tuple[int, int] | None, seed: int = 0) -> list[ScoredTask]:
    rng = random.Random(seed)
    hotkeys = [f"5Hotkey{i:05d}" for i in range(n_miners)]
    records = []
    for t in range(n_tasks):
        age = rng.uniform(0.0, 7 * DAY_S)
        w_task = rng.choice((1.0, 2.0, 4.0, 8.0, 12.649))
        members = hotkeys if pool is None else rng.sample(hotkeys, rng.randint(*pool))
        records.append(ScoredTask(f"task-{t:06d}", NOW - age, {hk: rng.choice(ADJUSTED) * w_task for hk in members}))
    rng.shuffle(records)  # arrival order is arbitrary
    return records


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(n_miners: int, n_tasks: int, repeats: int) -> None:
    config = ScoringConfig()
    for label, pool in (("full", None), ("pool 8-25", (8, min(25, n_miners)))):
        records = make_records(n_miners, n_tasks, pool)
        table = build_score_table(records)
        rows = len(table.row_score)
        t_build = _median_time(lambda records=records: build_score_table(records), repeats)
        t_recompute = _median_time(lambda table=table: recompute(table, NOW, config), repeats)
        t_replay = _median_time(lambda records=records: replay(records, NOW, config), repeats)
        result = recompute(table, NOW, config)
        print(
            f"{label:>10}: {n_miners} miners x {n_tasks} tasks ({rows:,} rows): "
            f"build {t_build:.3f} s, recompute {t_recompute * 1000:.1f} ms, replay {t_replay:.3f} s "
            f"(miners scored {len(result.hotkeys)}, digest {result.digest[:12]})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--miners", type=int, default=256)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run(args.miners, args.tasks, args.repeats)


if __name__ == "__main__":
    main()
