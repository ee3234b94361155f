"""Load: many connected SDK miners and many tasks in flight at once, with instant training.

One round of the real mesh (six service processes, embedded NATS and Redis) with `miners`
fast SDK miners connected and up to `concurrent` synthetic tasks past PENDING at once.
Offers, downloads, uploads and evaluation jobs all flow; the scenario reports how long each
task spends in each state (from the `state_changed` event log), the miner-side times
(offer→answer, download, upload), events per second on the domain stream and tasks per
minute. Any error is a problem: a miner refused or failing, an honest upload not scored, a
task not SCORED, an audit finding, a miner dropped, a service that fell over.

    python -m benchmarks.reliability.load            # full size (200 miners × 50 tasks), 1 then 3 dataset_prep
    python -m benchmarks.reliability.load --ci       # the test's size
    python -m benchmarks.reliability.load --dataset-replicas 3
    python -m benchmarks.reliability.load --generator endpoint   # synthetic rows from a remote server

At full size the round runs once per dataset_prep replica count (1 and 3: replicas share the
jobs.prepare work queue) and the last line compares their preparing-data p99.

Synthetic rows come from the tiny base model on this machine's CPU (`--generator local`, the
default: every replica competes for the same cores as the rest of the mesh), or from a FAKE
OpenAI-compatible endpoint standing for a remote generator server (`--generator endpoint`:
each request takes `--endpoint-latency` seconds there, at most 32 at once; see
generator_endpoint.py), where a replica mostly waits and the work queue is what scales.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.reliability.common import ScenarioResult, percentile
from benchmarks.reliability.fleet import build_adapters
from benchmarks.reliability.generator_endpoint import FakeGeneratorEndpoint
from benchmarks.reliability.harness import RoundHarness, RoundOptions, read_events
from gradients.demo import DemoOptions, build_base_model
from gradients.runtime import EventBus, events
from gradients.v1 import common_pb2 as pb
from gradients.v1 import selector_pb2, selector_pb2_grpc

# The states a task passes through on its way to SCORED (DELAYED only when miners are short).
STAGES = ("PREPARING_DATA", "LOOKING_FOR_MINERS", "DELAYED", "TRAINING", "PREEVALUATION", "EVALUATING")
MINER_STAGES = ("offer_to_answer", "download", "upload")
TERMINAL_NAMES = {"SCORED", "FAILED", "CANCELLED"}


@dataclass
class LoadOptions:
    miners: int = 200
    tasks: int = 50
    concurrent: int = 50
    # Real seconds per nominal hour: 1-3 h tasks train for 20-60 s. The deadline is fixed when
    # the offer round starts (docs/flow.md step 4), so the window must outlast the round, which takes
    # seconds under load (10.6 s p99 on a busy box), plus the TRAINING event reaching the
    # gateway and the download: at 3 or 8 s/h a 1 h task left its miners < 1.5 s to upload.
    time_scale: float = 20.0
    rows: int = 60
    pool_min: int = 8  # text pool size: the paper's 8-15
    pool_max: int = 15
    eval_workers: int = 2  # eval_worker processes on the one work queue
    dataset_concurrency: int = 1  # tasks one dataset_prep replica prepares at once
    # One round per entry: dataset_prep processes sharing the jobs.prepare work queue.
    dataset_replicas: tuple[int, ...] = (1, 3)
    timeout_s: float = 280.0
    generator: str = "local"  # local (the tiny model, on this CPU) or endpoint (the fake remote server)
    endpoint_latency_s: float = 0.5  # seconds per request at the fake endpoint
    sample_every_s: float = 2.0  # how often connected miners are counted
    data_dir: Path | None = None  # None = a temporary folder
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def ci(cls, data_dir: Path | None = None) -> LoadOptions:
        return cls(
            miners=40,
            tasks=8,
            concurrent=8,
            time_scale=6.0,
            pool_min=4,
            pool_max=6,
            eval_workers=1,
            timeout_s=90.0,
            data_dir=data_dir,
            dataset_replicas=(1,),
        )

    @property
    def name(self) -> str:
        return f"{self.miners} miners × {self.tasks} tasks"

    def round_name(self, replicas: int) -> str:
        name = (
            self.name if len(self.dataset_replicas) == 1 and replicas == 1 else f"{self.name}, {replicas} dataset_prep"
        )
        return (
            name if self.generator == "local" else f"{name}, generator endpoint {self.endpoint_latency_s:g} s/request"
        )

    def env(self) -> dict[str, str]:
        return {
            "GRADIENTS_SELECTOR_TEXT_POOL_MIN": str(self.pool_min),
            "GRADIENTS_SELECTOR_TEXT_POOL_MAX": str(self.pool_max),
            "GRADIENTS_DATASET_CONCURRENCY": str(self.dataset_concurrency),
            # The tiny base model never writes valid JSON: one attempt, then short field-by-field answers.
            "GRADIENTS_DATASET_LOCAL_ATTEMPTS": "1",
            "GRADIENTS_DATASET_LOCAL_FALLBACK_MAX_NEW_TOKENS": "8",
            **self.extra_env,
        }


@dataclass
class Timeline:
    """Per state: how long each task stayed in it, and the most tasks in it at once."""

    durations: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    at_once: dict[str, int] = field(default_factory=dict)
    end_to_end: list[float] = field(default_factory=list)  # PREPARING_DATA → terminal
    first_at: float = math.inf


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    steps = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in steps:
        current += step
        best = max(best, current)
    return best


def timeline(changes: list) -> Timeline:
    """From the `state_changed` log: the time between entering a state and leaving it, per task."""
    out = Timeline()
    by_task: dict[str, list] = defaultdict(list)
    for change in changes:
        by_task[change.task_id].append(change)
    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for task_changes in by_task.values():
        task_changes.sort(key=lambda c: c.version)
        stamps = [(pb.TaskState.Name(c.to_state), c.at.ToNanoseconds() / 1e9) for c in task_changes]
        for (state, entered), (_, left) in zip(stamps, stamps[1:]):
            out.durations[state].append(left - entered)
            intervals[state].append((entered, left))
        (_, start), (last_state, end) = stamps[0], stamps[-1]
        out.first_at = min(out.first_at, start)
        if last_state in TERMINAL_NAMES:
            out.end_to_end.append(end - start)
        intervals["in flight"].append((start, end if last_state in TERMINAL_NAMES else math.inf))
    out.at_once = {state: _max_overlap(spans) for state, spans in intervals.items()}
    return out


@dataclass
class StreamCounts:
    events: int  # messages on the domain stream
    per_subject: dict[str, int]
    dead_letters: int


async def stream_counts(nats_url: str) -> StreamCounts:
    bus = await EventBus.connect(nats_url, "reliability-load")
    try:
        info = await bus.js.stream_info(events.DOMAIN_STREAM.name, subjects_filter=">")
        dead = await bus.js.stream_info(events.DEAD_LETTER_STREAM.name)
        return StreamCounts(info.state.messages, dict(info.state.subjects or {}), dead.state.messages)
    finally:
        await bus.stop(1)


def logged_trouble(harness: RoundHarness) -> list[str]:
    """WARNING and ERROR records the services logged so far (their logs are JSON lines)."""
    found = []
    for child in harness.mesh.children.values():
        for line in child.log_tail(10**9).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a library's own stderr output
            if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                found.append(f"{child.name} {record['level']}: {str(record.get('msg'))[:200]}")
    return found


class ConnectedSampler:
    """Counts the miners the selector sees connected, every few seconds while the round runs."""

    def __init__(self, address: str, every_s: float):
        self.address = address
        self.every_s = every_s
        self.counts: list[int] = []
        self.failures: list[str] = []
        self._next = 0.0

    async def __call__(self, tasks) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        try:
            async with grpc.aio.insecure_channel(self.address) as ch:
                reply = await selector_pb2_grpc.SelectorStub(ch).ListMiners(
                    selector_pb2.ListMinersRequest(connected_only=True), timeout=10
                )
            self.counts.append(len(reply.miners))
        except grpc.aio.AioRpcError as exc:
            self.failures.append(f"ListMiners: {exc.code().name} {exc.details()}")


def _r(seconds: float) -> float:
    return round(seconds, 3) if math.isfinite(seconds) else seconds


def _p50_p99(figures: dict, name: str, values: list[float]) -> None:
    if values:
        figures[f"{name}_p50_s"] = _r(percentile(values, 50))
        figures[f"{name}_p99_s"] = _r(percentile(values, 99))


async def run(options: LoadOptions | None = None) -> list[ScenarioResult]:
    options = options or LoadOptions()
    if options.generator == "endpoint":
        with FakeGeneratorEndpoint(latency_s=options.endpoint_latency_s) as endpoint:
            options.extra_env = {**options.extra_env, **endpoint.env()}
            return await _rounds(options)
    if options.generator != "local":
        raise ValueError(f"generator must be local or endpoint, not {options.generator!r}")
    return await _rounds(options)


async def _rounds(options: LoadOptions) -> list[ScenarioResult]:
    results = []
    for replicas in options.dataset_replicas:
        with tempfile.TemporaryDirectory(prefix="gm-load-") as tmp:
            root = Path(options.data_dir) if options.data_dir else Path(tmp)
            data_dir = root / f"replicas-{replicas}" if len(options.dataset_replicas) > 1 else root
            results.append(await run_round(options, data_dir, replicas))
    compare_replicas(results, options.dataset_replicas)
    return results


# With 3 replicas sharing the queue, preparing data must wait at most half as long at p99.
REPLICA_P99_TARGET = 0.5


def replica_speedup(p99_one: float, p99_many: float) -> float:
    """p99 with more replicas as a share of the 1-replica p99 (lower is better)."""
    return p99_many / p99_one if p99_one > 0 else math.inf


def compare_replicas(results: list[ScenarioResult], counts: tuple[int, ...]) -> None:
    """On the round with the most replicas: its preparing-data p99 against the 1-replica round's."""
    by_count = dict(zip(counts, results))
    if 1 not in by_count or len(by_count) < 2:
        return
    one = by_count[1].figures.get("preparing_data_p99_s")
    most = max(by_count)
    many = by_count[most].figures.get("preparing_data_p99_s")
    if not isinstance(one, (int, float)) or not isinstance(many, (int, float)):
        return
    ratio = replica_speedup(one, many)
    by_count[most].figures["preparing_data_p99_vs_1_replica"] = _r(ratio)
    if ratio > REPLICA_P99_TARGET:
        by_count[most].problem(
            f"preparing data p99 with {most} replicas is {ratio:.2f}× the 1-replica figure "
            f"({many:.1f}s vs {one:.1f}s); the target is at most {REPLICA_P99_TARGET}"
        )


async def run_round(o: LoadOptions, data_dir: Path, replicas: int = 1) -> ScenarioResult:
    result = ScenarioResult("load", o.round_name(replicas), tried=o.tasks)
    # The adapters first: building them must not happen while tasks already wait for miners.
    base, _ = build_base_model(DemoOptions(data_dir=data_dir, rows=o.rows))
    await asyncio.to_thread(build_adapters, base, data_dir / "adapters", o.miners)
    harness = RoundHarness(
        RoundOptions(
            data_dir=data_dir,
            miners=o.miners,
            tasks=o.tasks,
            concurrent=o.concurrent,
            time_scale=o.time_scale,
            rows=o.rows,
            timeout_s=o.timeout_s,
            eval_workers=o.eval_workers,
            dataset_replicas=replicas,
            extra_env=o.env(),
        )
    )
    started = time.monotonic()
    try:
        await harness.start()
        connected_s = time.monotonic() - started
        sampler = ConnectedSampler(harness.mesh.addresses["selector"], o.sample_every_s)
        tasks = await harness.wait_finished(on_tick=sampler)
        finished_unix = time.time()
        result.seconds = time.monotonic() - started
        audit = await harness.audit(tasks)
        log = await read_events(harness.mesh.nats_url, (events.TASK_STATE_CHANGED, events.EVAL_COMPLETED))
        counts = await stream_counts(harness.mesh.nats_url)
        crashed = harness.crashed()
        trouble = logged_trouble(harness)  # before the services stop: shutdown is not under test here
    finally:
        await harness.stop()
    fleet = harness.fleet
    times = timeline(log[events.TASK_STATE_CHANGED])
    evaluations = log[events.EVAL_COMPLETED]
    # First task past PENDING → last task finished (the whole run when no task ever started).
    window = finished_unix - times.first_at if math.isfinite(times.first_at) else result.seconds
    scored = [t for t in tasks if t.state == pb.SCORED]
    accepted = sum(len(set(t.miner_hotkeys)) for t in tasks)
    acknowledged = fleet.acknowledged()
    deadlines = {t.task_id: t.deadline.ToNanoseconds() / 1e9 for t in tasks}
    margins = [deadlines[up.task_id] - up.at for up in acknowledged.values() if up.task_id in deadlines]

    result.handled = len(scored)
    result.lost = audit.lost
    result.crashes = len(crashed)
    figures: dict[str, float | int | str] = {}
    for stage in STAGES:
        _p50_p99(figures, stage.lower(), times.durations.get(stage, []))
    for stage in MINER_STAGES:
        _p50_p99(figures, f"miner_{stage}", getattr(fleet.times, stage))
    _p50_p99(figures, "task", times.end_to_end)
    figures.update(
        {
            "tasks_in_flight_max": times.at_once.get("in flight", 0),
            "training_at_once_max": times.at_once.get("TRAINING", 0),
            "evaluating_at_once_max": times.at_once.get("EVALUATING", 0),
            "miners_connected_min": min(sampler.counts, default=0),
            "accepted": accepted,
            "uploads": len(acknowledged),
            "upload_margin_min_s": _r(min(margins, default=math.nan)),
            "scored_results": sum(1 for c in evaluations for r in c.results if r.ok),
            "events": counts.events,
            "events_per_s": _r(counts.events / window),
            "tasks_per_min": _r(len(scored) / window * 60),
            "connect_s": _r(connected_s),
            "round_s": _r(window),
            "wall_s": _r(result.seconds),
        }
    )
    result.figures = figures
    judge(result, o, audit, fleet, evaluations, crashed, sampler, counts, trouble)
    return result


def judge(
    result: ScenarioResult,
    o: LoadOptions,
    audit,
    fleet,
    evaluations,
    crashed,
    sampler,
    counts: StreamCounts,
    trouble: list[str],
) -> None:
    """Every error under load is a problem of the result."""
    for state, count in sorted(audit.by_state.items()):
        if state != "SCORED":
            reasons = sorted(set(audit.failure_reasons.values()))[:3]
            result.problem(f"{count} task(s) ended {state}{': ' + str(reasons) if reasons else ''}")
    for problem in audit.problems():
        result.problem(problem)
    for kind, items in (("miner error", fleet.errors), ("miner refused", fleet.refusals)):
        for item in items[:5]:
            result.problem(f"{kind}: {item}")
        if len(items) > 5:
            result.problem(f"{len(items)} {kind}s in all")
    # Every fleet upload is an honest adapter of the base model: evaluation must score it.
    failed = [
        f"{c.task_id}/{r.miner_hotkey[:8]}: {r.failure_reason[:160]}"
        for c in evaluations
        for r in c.results
        if not r.ok
    ]
    failed += [f"{c.task_id}: job failed: {c.failure_reason[:160]}" for c in evaluations if not c.ok]
    for text in failed[:5]:
        result.problem(f"evaluation failed an honest upload: {text}")
    if len(failed) > 5:
        result.problem(f"{len(failed)} evaluation failures in all")
    uploads, accepted = result.figures["uploads"], result.figures["accepted"]
    if uploads != accepted:
        result.problem(f"{uploads} uploads acknowledged for {accepted} accepted offers")
    announced = counts.per_subject.get(events.SUBMISSION_RECEIVED, 0)
    if announced != uploads:
        result.problem(f"{announced} submission.received events for {uploads} acknowledged uploads")
    if not sampler.counts:
        result.problem("the selector never answered ListMiners during the round")
    elif min(sampler.counts) < o.miners:
        result.problem(f"only {min(sampler.counts)} of {o.miners} miners connected at one point")
    for failure in sampler.failures[:3]:
        result.problem(f"selector: {failure}")
    if counts.dead_letters:
        result.problem(f"{counts.dead_letters} dead-lettered event(s)")
    for line in sorted(set(trouble))[:5]:
        result.problem(f"logged: {line}")
    if len(trouble) > 5:
        result.problem(f"{len(trouble)} WARNING/ERROR records logged in all")
    for crash in crashed:
        result.problem(f"crashed: {crash}")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="the small size of the test")
    for name in ("miners", "tasks", "concurrent", "eval_workers", "dataset_concurrency", "pool_min", "pool_max"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    parser.add_argument("--time-scale", type=float)
    parser.add_argument("--generator", choices=("local", "endpoint"), help="where synthetic rows come from")
    parser.add_argument("--endpoint-latency", dest="endpoint_latency_s", type=float, help="seconds per request")
    parser.add_argument(
        "--dataset-replicas",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        help="comma-separated dataset_prep replica counts, one round each (default 1,3)",
    )
    parser.add_argument("--data-dir", type=Path, help="keep the mesh's logs and data here")
    args = parser.parse_args()
    options = LoadOptions.ci() if args.ci else LoadOptions()
    for name, value in vars(args).items():
        if name != "ci" and value is not None:
            setattr(options, name, value)
    for result in asyncio.run(run(options)):
        print(result.summary())


if __name__ == "__main__":
    main()
