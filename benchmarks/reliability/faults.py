"""Faults: kill -9 of every service mid-round, NATS and Redis restarts, a NATS cluster losing a node.

Each scenario runs real task rounds (fast miners, the tiny model) and injects the fault
while tasks are in flight; the harness's audit then checks that every task ended SCORED or
FAILED with a reason, none is stuck, nothing was scored twice and no acknowledged upload
was lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.reliability.common import ScenarioDir, ScenarioResult
from benchmarks.reliability.harness import SERVICES, RoundHarness, RoundOptions
from gradients.mesh import check_health
from gradients.runtime import embedded
from gradients.v1 import common_pb2 as pb


@dataclass
class FaultOptions:
    data_dir: Path | None = None  # None = a temporary directory
    rounds: int = 20  # tasks in the kill -9 scenario
    miners: int = 6
    concurrent: int = 3
    kills: int = 18  # then the round is left to finish (3 per service)
    kill_every_s: tuple[float, float] = (3.0, 7.0)  # random pause between kills
    down_s: tuple[float, float] = (0.2, 2.0)  # how long a killed service stays down
    restart_tasks: int = 4  # tasks in each NATS / Redis restart scenario
    outage_time_scale: float = 6.0  # seconds per task hour there: training windows outlast the outage
    cluster_tasks: int = 4
    seed: int = 0
    timeout_s: float = 600.0
    scenarios: tuple[str, ...] = ("kill", "nats-restart", "redis-restart", "nats-cluster")

    @classmethod
    def ci(cls) -> FaultOptions:
        return cls(
            rounds=4,
            concurrent=4,
            kills=6,
            restart_tasks=3,
            cluster_tasks=3,
            kill_every_s=(0.5, 1.5),
            down_s=(0.2, 1.0),
            outage_time_scale=4.0,
            timeout_s=420.0,
        )


def _result(name: str, harness: RoundHarness, audit, tried: int, handled: int, started: float) -> ScenarioResult:
    result = ScenarioResult(
        "faults",
        name,
        tried=tried,
        handled=handled,
        lost=audit.lost,
        crashes=len(harness.crashed()),
        seconds=round(time.monotonic() - started, 1),
    )
    result.figures.update({f"tasks_{k.lower()}": v for k, v in audit.by_state.items()})
    result.figures["uploads"] = len(harness.fleet.uploads) if harness.fleet else 0
    if harness.fleet:
        # A miner refused or failing while the validator was down is tolerated if it retried in time;
        # what counts is the audit. The numbers are kept for the report.
        result.figures["miner_refusals"] = len(harness.fleet.refusals)
        result.figures["miner_errors"] = len(harness.fleet.errors)
        result.details = harness.fleet.refusals[:10] + harness.fleet.errors[:10]
    for p in audit.problems() + harness.crashed():
        result.problem(p)
    for reason in set(audit.failure_reasons.values()):
        result.figures.setdefault("failure_reasons", "")
        result.figures["failure_reasons"] = f"{result.figures['failure_reasons']}{reason[:80]}; "
    return result


async def wait_serving(harness: RoundHarness, name: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check_health, harness.mesh.addresses[name]) == "SERVING":
            return True
        await asyncio.sleep(0.2)
    return False


async def kill_each_service(options: FaultOptions, data_dir: Path) -> ScenarioResult:
    """kill -9 a service at a random point, bring it back, repeat (every service in turn) until the tasks end."""
    rng = random.Random(options.seed)
    harness = RoundHarness(
        RoundOptions(
            data_dir=data_dir / "kill",
            miners=options.miners,
            tasks=options.rounds,
            concurrent=options.concurrent,
            timeout_s=options.timeout_s,
            # As in production (hours against seconds), a delayed task's retry
            # waits longer than a selector restart and its miners' reconnection.
            extra_env={"GRADIENTS_TASK_RETRY_WAIT_HOURS": "2"},
        )
    )
    started = time.monotonic()
    kills: list[str] = []
    recovered = 0
    try:
        await harness.start()
        order = list(SERVICES)
        rng.shuffle(order)
        next_kill = time.monotonic() + rng.uniform(*options.kill_every_s)

        async def inject(tasks) -> None:
            nonlocal next_kill, recovered
            if time.monotonic() < next_kill or len(kills) >= options.kills:
                return
            name = order[len(kills) % len(order)]
            harness.kill(name)
            kills.append(name)
            await asyncio.sleep(rng.uniform(*options.down_s))
            harness.respawn(name)
            if await wait_serving(harness, name, timeout_s=180.0):
                recovered += 1
            next_kill = time.monotonic() + rng.uniform(*options.kill_every_s)

        tasks = await harness.wait_finished(on_tick=inject)
        audit = await harness.audit(tasks)
        result = _result(
            "kill -9 of each service during task rounds",
            harness,
            audit,
            tried=len(kills),
            handled=recovered,
            started=started,
        )
        result.figures["kills"] = ",".join(f"{n}×{kills.count(n)}" for n in order if n in kills)
        if set(kills) != set(SERVICES):
            result.problem(f"not every service was killed (the round ended first): {sorted(set(kills))}")
        return result
    finally:
        await harness.stop()


async def restart_infrastructure(options: FaultOptions, data_dir: Path, which: tuple[str, ...]) -> ScenarioResult:
    """Stop NATS (JetStream on disk) and/or Redis (AOF) gracefully mid-round and start each again on
    the same port: one restart each time a task is training, in the order given."""
    label = " + ".join(which)
    harness = RoundHarness(
        RoundOptions(
            data_dir=data_dir / f"{'-'.join(which)}-restart",
            miners=options.miners,
            tasks=options.restart_tasks,
            concurrent=options.restart_tasks,
            time_scale=options.outage_time_scale,
            timeout_s=options.timeout_s,
        )
    )
    started = time.monotonic()
    pending = list(which)
    failures: list[str] = []
    restarted = 0
    last_restart = 0.0
    try:
        await harness.start()

        async def inject(tasks) -> None:
            nonlocal restarted, last_restart
            # Mid-round: while some task is training (offers answered, uploads about to flow).
            if not pending or time.monotonic() - last_restart < 5 or not any(t.state == pb.TRAINING for t in tasks):
                return
            which_now = pending.pop(0)
            server = harness.mesh.nats if which_now == "nats" else harness.mesh.redis
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(server.restart)
                restarted += 1
            except Exception as exc:  # noqa: BLE001 - reported as a failed injection, the round goes on
                failures.append(f"{which_now} did not restart: {exc}"[:300])
            last_restart = time.monotonic()

        tasks = await harness.wait_finished(on_tick=inject)
        audit = await harness.audit(tasks)
        result = _result(
            f"{label} restart mid-round", harness, audit, tried=len(which), handled=restarted, started=started
        )
        for failure in failures:
            result.problem(failure)
        return result
    finally:
        await harness.stop()


@dataclass
class NatsCluster:
    nodes: list[embedded.ManagedServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_nats_cluster(data_dir: Path, size: int = 3) -> NatsCluster:
    """`size` nats-servers with JetStream, routed to each other on loopback (one cluster)."""
    client_ports = [embedded.free_port() for _ in range(size)]
    route_ports = [embedded.free_port() for _ in range(size)]
    routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
    cluster = NatsCluster()
    for i in range(size):
        args = ["--cluster_name", "gradients", "--cluster", f"nats://127.0.0.1:{route_ports[i]}", "--routes", routes]
        cluster.nodes.append(embedded.start_nats(data_dir, port=client_ports[i], extra_args=args, name=f"nats{i}"))
    return cluster


async def wait_jetstream_ready(url: str, timeout_s: float = 60.0) -> None:
    """A new cluster elects its JetStream meta leader a few seconds after start."""
    import nats

    deadline = time.monotonic() + timeout_s
    while True:
        nc = await nats.connect(servers=url.split(","), connect_timeout=2)
        try:
            await nc.jetstream().account_info()
            return
        except Exception:  # noqa: BLE001 - not ready yet
            if time.monotonic() > deadline:
                raise
        finally:
            await nc.close()
        await asyncio.sleep(0.5)


async def nats_cluster_loses_a_node(
    options: FaultOptions, data_dir: Path, then: tuple[str, ...] = ()
) -> ScenarioResult:
    """Three routed nats-servers, streams with 3 replicas; one node is killed mid-round.

    `then`: further faults in the same round, each once a task is training again: "redis-restart"
    (Redis stopped and started on its port, AOF) and "node-restart" (the lost node comes back
    with its JetStream store on disk and catches up).
    """
    base = data_dir / ("cluster" if not then else "cluster-" + "-".join(then))
    base.mkdir(parents=True, exist_ok=True)
    cluster = await asyncio.to_thread(start_nats_cluster, base)
    started = time.monotonic()
    harness = None
    steps = ["node-kill", *then]
    done: list[str] = []
    failures: list[str] = []
    last = 0.0
    try:
        await wait_jetstream_ready(cluster.url)
        harness = RoundHarness(
            RoundOptions(
                data_dir=base / "round",
                miners=options.miners,
                tasks=options.cluster_tasks,
                concurrent=options.cluster_tasks,
                time_scale=options.outage_time_scale,
                nats_url=cluster.url,
                timeout_s=options.timeout_s,
                extra_env={"GRADIENTS_STREAM_REPLICAS": "3"},
            )
        )
        await harness.start()

        async def inject(tasks) -> None:
            nonlocal last
            if len(done) + len(failures) == len(steps) or time.monotonic() - last < 3:
                return
            if not any(t.state in (pb.TRAINING, pb.PREEVALUATION, pb.EVALUATING) for t in tasks):
                return  # mid-round: uploads or evaluation in flight
            step = steps[len(done) + len(failures)]
            try:
                if step == "node-kill":  # the node the services most likely talk to: the first in the list
                    await asyncio.to_thread(cluster.nodes[0].kill)
                elif step == "node-restart":
                    await asyncio.to_thread(cluster.nodes[0].restart)
                elif step == "redis-restart":
                    await asyncio.to_thread(harness.mesh.redis.stop)
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(harness.mesh.redis.restart)
                else:
                    raise ValueError(f"unknown fault step {step!r}")
                done.append(step)
            except Exception as exc:  # noqa: BLE001 - a failed injection is reported, the round goes on
                failures.append(f"{step}: {exc}"[:300])
            last = time.monotonic()

        tasks = await harness.wait_finished(on_tick=inject)
        audit = await harness.audit(tasks)
        name = "3-node NATS cluster loses a node" + "".join(
            {"redis-restart": ", Redis restarted", "node-restart": ", the node comes back"}[t] for t in then
        )
        result = _result(name, harness, audit, tried=len(steps), handled=len(done), started=started)
        for failure in failures:
            result.problem(failure)
        missing = [s for s in steps if s not in done and not any(f.startswith(s) for f in failures)]
        if missing:
            result.problem(f"the round ended before these faults were injected: {missing}")
        result.figures["replicas"] = await stream_replicas(cluster.url)
        return result
    finally:
        if harness is not None:
            await harness.stop()
        await asyncio.to_thread(cluster.stop)


async def stream_replicas(url: str) -> int:
    import nats

    from gradients.runtime import events

    nc = await nats.connect(servers=url.split(","), connect_timeout=2)
    try:
        info = await nc.jetstream().stream_info(events.STREAMS[0].name)
        return int(info.config.num_replicas or 1)
    finally:
        await nc.close()


async def run(options: FaultOptions | None = None) -> list[ScenarioResult]:
    options = options or FaultOptions()
    folder = ScenarioDir(options.data_dir, "gm-faults-")
    data_dir = folder.path
    results = []
    try:
        if "kill" in options.scenarios:
            results.append(await kill_each_service(options, data_dir))
        if "nats-restart" in options.scenarios:
            results.append(await restart_infrastructure(options, data_dir, ("nats",)))
        if "redis-restart" in options.scenarios:
            results.append(await restart_infrastructure(options, data_dir, ("redis",)))
        if "nats-redis-restart" in options.scenarios:
            results.append(await restart_infrastructure(options, data_dir, ("nats", "redis")))
        if "nats-cluster" in options.scenarios:
            results.append(await nats_cluster_loses_a_node(options, data_dir))
        if "infrastructure" in options.scenarios:  # the CI subset: every infrastructure fault in one round
            results.append(await nats_cluster_loses_a_node(options, data_dir, then=("redis-restart", "node-restart")))
    finally:
        folder.cleanup()
    return results
