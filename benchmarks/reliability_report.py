"""The reliability report: faults, load, bad input and hostile miners, at full size, in one table.

    python -m benchmarks.reliability_report            # everything (about 10-15 minutes here)
    python -m benchmarks.reliability_report --only faults,fuzz --quick

Every scenario runs real processes (embedded NATS and Redis, the six services, SDK miners);
see benchmarks/reliability/. Exit status 0 only when every line shows 0 lost, 0 crashes and
every fault, input or attack handled.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time

from benchmarks.reliability.common import ScenarioResult

# area -> (module, options class); `--quick` uses each options class's `ci()` size.
AREAS = {
    "faults": ("benchmarks.reliability.faults", "FaultOptions"),
    "load": ("benchmarks.reliability.load", "LoadOptions"),
    "fuzz": ("benchmarks.reliability.fuzz", "FuzzOptions"),
    "hostile": ("benchmarks.reliability.hostile", "HostileOptions"),
}


async def run_area(area: str, quick: bool) -> list[ScenarioResult]:
    module_name, options_name = AREAS[area]
    module = importlib.import_module(module_name)
    options_type = getattr(module, options_name)
    options = options_type.ci() if quick and hasattr(options_type, "ci") else options_type()
    started = time.monotonic()
    try:
        results = await module.run(options)
    except Exception as exc:  # noqa: BLE001 - a scenario that blows up is a failed line, not a lost report
        failed = ScenarioResult(area, f"{area} (scenario raised)", tried=1)
        failed.problem(f"{type(exc).__name__}: {exc}")
        results = [failed]
    results = results if isinstance(results, list) else [results]
    for r in results:
        r.seconds = r.seconds or round(time.monotonic() - started, 1)
    return results


def table(results: list[ScenarioResult]) -> str:
    head = ("area", "scenario", "tried", "handled", "lost", "crashes", "s", "figures")
    rows = [head]
    for r in results:
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in r.figures.items() if k != "failure_reasons")
        rows.append(
            (r.category, r.name, str(r.tried), str(r.handled), str(r.lost), str(r.crashes), f"{r.seconds:.0f}", figures)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row[:-1])) + "  " + row[-1])
        if i == 0:
            lines.append("-" * min(160, sum(widths) + 2 * len(widths) + 20))
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def totals(results: list[ScenarioResult]) -> str:
    faults = [r for r in results if r.category == "faults"]
    bad = [r for r in results if r.category == "bad input"]
    hostile = [r for r in results if r.category == "hostile"]
    load = [r for r in results if r.category == "load"]
    return "\n".join(
        [
            f"faults injected and survived:   {sum(r.handled for r in faults)} of {sum(r.tried for r in faults)}",
            f"load held:                      {sum(r.handled for r in load)} of {sum(r.tried for r in load)} tasks scored",
            f"bad inputs tried and handled:   {sum(r.handled for r in bad)} of {sum(r.tried for r in bad)}",
            f"hostile attempts handled:       {sum(r.handled for r in hostile)} of {sum(r.tried for r in hostile)}",
            f"data lost:                      {sum(r.lost for r in results)}",
            f"service crashes:                {sum(r.crashes for r in results)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(AREAS), help=f"comma-separated areas: {', '.join(AREAS)}")
    parser.add_argument("--quick", action="store_true", help="CI sizes instead of the full report")
    args = parser.parse_args(argv)
    areas = [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = [a for a in areas if a not in AREAS]
    if unknown:
        parser.error(f"unknown area(s) {unknown}; choose from {', '.join(AREAS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    results: list[ScenarioResult] = []
    for area in areas:
        print(f"running {area}…", file=sys.stderr, flush=True)
        area_results = asyncio.run(run_area(area, args.quick))
        for r in area_results:
            print("  " + r.summary(), file=sys.stderr, flush=True)
        results += area_results
    print()
    print(table(results))
    print()
    print(totals(results))
    problems = [f"{r.category}/{r.name}: {p}" for r in results for p in r.problems]
    if problems:
        print("\nproblems:")
        for p in problems:
            print(f"  - {p}")
    print(f"\nwall time {time.monotonic() - started:.0f} s ({'CI sizes' if args.quick else 'full size'})")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
