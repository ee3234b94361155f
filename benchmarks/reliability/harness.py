"""A tournament round for the reliability scenarios: the real mesh, fast miners, an audit.

`RoundHarness` starts embedded NATS and Redis (or uses given URLs), the six services as
child processes (the same `Mesh` as `gradients up`), synthetic instruct tasks over the
tiny model, and a `Fleet` of fast SDK miners. `audit()` then reads the task records and the
event log and says what went wrong: tasks stuck or failed without a reason, a task scored
or evaluated twice, an acknowledged upload that never reached evaluation.

TaskService requires a customer API key (GRADIENTS_TASK_AUTH=required, the production
default): the harness creates the account `reliability` and `customer_metadata()` carries
its key for any scenario that calls TaskService. The round's own tasks are synthetic (the
scheduler makes them; no account owns them), so progress and the audit read the task
records themselves (`Mesh.tasks`), as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis.exceptions

from benchmarks.reliability.fleet import Fleet, build_adapters, dev_keypair, fleet_names, write_uid_file
from gradients.demo import DemoOptions, build_base_model, mesh_env, write_pools
from gradients.mesh import SERVICES, Mesh, MeshOptions
from gradients.runtime import EventBus, events
from gradients.v1 import common_pb2 as pb

TERMINAL = {pb.SCORED, pb.FAILED, pb.CANCELLED}
CUSTOMER_ACCOUNT = "reliability"
ASSET_CACHE = Path(os.environ.get("GM_BENCH_CACHE", Path.home() / ".cache" / "gm" / "eval_bench")) / "reliability"


@dataclass
class RoundOptions:
    data_dir: Path
    miners: int = 6
    tasks: int = 4
    concurrent: int = 2
    time_scale: float = 3.0  # real seconds per nominal hour: 1-3 h tasks train for 3-9 s
    rows: int = 60
    nats_url: str | None = None
    redis_url: str | None = None
    timeout_s: float = 300.0
    eval_workers: int = 1
    dataset_replicas: int = 1  # dataset_prep processes on the jobs.prepare work queue
    extra_env: dict[str, str] = field(default_factory=dict)
    # More allowed miners beside the fleet (e.g. hostile ones the scenario drives itself).
    extra_hotkeys: list[str] = field(default_factory=list)


@dataclass
class Audit:
    tasks: list = field(default_factory=list)
    by_state: dict[str, int] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)  # not terminal
    failed_without_reason: list[str] = field(default_factory=list)
    duplicate_scores: list[str] = field(default_factory=list)  # task scored / evaluated more than once
    lost_submissions: list[str] = field(default_factory=list)  # acknowledged upload missing downstream
    honest_refused: list[str] = field(default_factory=list)  # a fleet (valid) upload failed evaluation
    failure_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return len(self.stuck) + len(self.lost_submissions)

    def problems(self) -> list[str]:
        out = [f"stuck: {t}" for t in self.stuck]
        out += [f"failed without a reason: {t}" for t in self.failed_without_reason]
        out += [f"duplicate: {d}" for d in self.duplicate_scores]
        out += [f"lost submission: {s}" for s in self.lost_submissions]
        out += [f"valid submission refused: {s}" for s in self.honest_refused]
        return out


class RoundHarness:
    def __init__(self, options: RoundOptions):
        self.options = options
        self.data_dir = Path(options.data_dir).resolve()
        self.mesh: Mesh | None = None
        self.fleet: Fleet | None = None
        self.validator = dev_keypair("gradients-reliability-validator")
        self.killed: Counter[str] = Counter()  # service -> times killed by the scenario
        self.extra_workers: dict[str, str] = {}  # extra process name -> its service module
        self.api_key = ""  # the `reliability` account's key (customer_metadata)

    # ---- start / stop ------------------------------------------------------------------

    def env(self, hotkeys: list[str]) -> dict[str, str]:
        o = self.options
        demo = DemoOptions(
            data_dir=self.data_dir,
            miners=o.miners,
            tasks=o.tasks,
            time_scale=o.time_scale,
            rows=o.rows,
            concurrent=o.concurrent,
        )
        # The tiny model and the fleet's adapters are deterministic: built once per machine, shared by runs.
        base, params_b = build_base_model(DemoOptions(data_dir=ASSET_CACHE))
        self.base_dir = base
        pools = write_pools(demo, base, params_b)
        env = mesh_env(demo, pools, self.validator.ss58_address, hotkeys)
        env.update(
            {
                "GRADIENTS_CHAIN_LEDGER_UIDS": str(write_uid_file(self.data_dir / "ledger-uids.json", hotkeys)),
                "GRADIENTS_DATASET_MAX_SYNTH_ROWS": "4",
                "GRADIENTS_DATASET_LOCAL_MAX_NEW_TOKENS": "16",
                "GRADIENTS_SELECTOR_OFFER_TIMEOUT_S": "3",
                "GRADIENTS_BUS_ACK_WAIT_S": "5",  # a killed consumer's message comes back this soon
                "GRADIENTS_BUS_NAK_DELAY_S": "0.5",
                "GRADIENTS_SHUTDOWN_GRACE_S": "2",
            }
        )
        env.update(o.extra_env)
        return env

    async def start(self) -> None:
        o = self.options
        self.data_dir.mkdir(parents=True, exist_ok=True)
        names = fleet_names(o.miners)
        hotkeys = [dev_keypair(n).ss58_address for n in names] + list(o.extra_hotkeys)
        env = self.env(hotkeys)
        self.mesh = Mesh(
            MeshOptions(data_dir=self.data_dir / "mesh", nats_url=o.nats_url, redis_url=o.redis_url, extra_env=env)
        )
        self.mesh.start()
        for i in range(1, o.eval_workers):
            self.add_eval_worker(f"eval_worker_{i + 1}")
        for i in range(1, o.dataset_replicas):
            self.add_replica(f"dataset_prep_{i + 1}", "dataset_prep")
        await asyncio.to_thread(self.mesh.wait_ready)
        self.api_key = await asyncio.to_thread(self.mesh.ensure_account, CUSTOMER_ACCOUNT)
        adapters = await asyncio.to_thread(build_adapters, self.base_dir, ASSET_CACHE / "adapters-v2", o.miners)
        self.fleet = Fleet(
            names, self.mesh.addresses["selector"], self.validator.ss58_address, adapters, self.data_dir / "miners"
        )
        await self.fleet.start()

    def add_eval_worker(self, name: str) -> None:
        """Another eval_worker process on the same work queue."""
        self.add_replica(name, "eval_worker")

    def add_replica(self, name: str, module: str) -> None:
        """Another process of service `module` (eval_worker, dataset_prep) on its work queue."""
        from gradients import mesh as mesh_module
        from gradients.runtime.embedded import free_port

        self.mesh.addresses[name] = f"127.0.0.1:{free_port()}"
        mesh_module.ADDRESS_ENV.setdefault(name, f"GRADIENTS_{name.upper()}_ADDR")
        self._spawn_as(name, module)
        self.extra_workers[name] = module

    def _spawn_as(self, name: str, module: str) -> None:
        import sys

        from gradients.mesh import ServiceProcess
        from gradients.runtime.embedded import spawn

        env = self.mesh.service_env()
        env["GRADIENTS_GRPC_PORT"] = self.mesh.addresses[name].rsplit(":", 1)[1]
        log_path = self.mesh.data_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process = spawn([sys.executable, "-m", f"services.{module}"], log_path, env)
        self.mesh.children[name] = ServiceProcess(name, self.mesh.addresses[name], process, log_path)

    async def stop(self) -> None:
        if self.fleet:
            await self.fleet.stop()
        if self.mesh:
            await asyncio.to_thread(self.mesh.stop, 10.0)

    # ---- faults ------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """kill -9 one service process (not restarted: call `respawn`)."""
        child = self.mesh.children[name]
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        self.killed[name] += 1

    def respawn(self, name: str) -> None:
        module = self.extra_workers.get(name, name)
        if module == name:
            self.mesh.spawn(name)
        else:
            self._spawn_as(name, module)

    def crashed(self) -> list[str]:
        """Service processes that exited on their own (not killed by the scenario)."""
        return [
            f"{c.name} exited {c.process.returncode}: {c.log_tail(600)}"
            for c in self.mesh.children.values()
            if c.process.poll() is not None and c.process.returncode != -9
        ]

    # ---- progress ----------------------------------------------------------------------

    def customer_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of a TaskService call by the harness's customer account."""
        return (("authorization", f"Bearer {self.api_key}"),)

    async def list_tasks(self) -> list:
        """Every task of the round (synthetic ones included), from the task records."""
        return await self.mesh.tasks()

    async def wait_finished(self, timeout_s: float | None = None, on_tick=None) -> list:
        """Until every expected task is terminal (task_service briefly down is tolerated)."""
        deadline = time.monotonic() + (timeout_s or self.options.timeout_s)
        tasks: list = []
        while time.monotonic() < deadline:
            try:
                tasks = await self.list_tasks()
            except (grpc.aio.AioRpcError, redis.exceptions.RedisError, OSError):
                tasks = tasks  # a restart in progress (Redis, in the fault scenarios): ask again
            if len(tasks) >= self.options.tasks and all(t.state in TERMINAL for t in tasks):
                return tasks
            if on_tick is not None:
                await on_tick(tasks)
            await asyncio.sleep(0.5)
        return tasks

    # ---- audit -------------------------------------------------------------------------

    async def audit(self, tasks: list | None = None) -> Audit:
        tasks = tasks if tasks is not None else await self.list_tasks()
        audit = Audit(tasks=tasks)
        audit.by_state = dict(Counter(pb.TaskState.Name(t.state) for t in tasks))
        if len(tasks) < self.options.tasks:
            audit.stuck += [f"only {len(tasks)} of {self.options.tasks} tasks were created"]
        for t in tasks:
            if t.state not in TERMINAL:
                audit.stuck.append(f"{t.task_id} in {pb.TaskState.Name(t.state)}")
            if t.state == pb.FAILED:
                audit.failure_reasons[t.task_id] = t.failure_reason
                if not t.failure_reason:
                    audit.failed_without_reason.append(t.task_id)
        stream = await read_events(
            self.mesh.nats_url, (events.EVAL_COMPLETED, events.TASK_SCORED, events.SUBMISSION_RECEIVED)
        )
        for subject in (events.EVAL_COMPLETED, events.TASK_SCORED):
            counts = Counter(m.task_id for m in stream[subject])
            audit.duplicate_scores += [f"{subject} published {n}× for {tid}" for tid, n in counts.items() if n > 1]
        for scored in stream[events.TASK_SCORED]:
            per_miner = Counter(s.miner_hotkey for s in scored.scores)
            audit.duplicate_scores += [f"{scored.task_id}: {h} scored {n}×" for h, n in per_miner.items() if n > 1]
        received = {
            (m.submission.task_id, m.submission.miner_hotkey, m.submission.sha256)
            for m in stream[events.SUBMISSION_RECEIVED]
        }
        results = {(c.task_id, r.miner_hotkey): r for c in stream[events.EVAL_COMPLETED] for r in c.results}
        evaluated = set(results)
        state = {t.task_id: t for t in tasks}
        for (task_id, hotkey), up in (self.fleet.acknowledged() if self.fleet else {}).items():
            if (task_id, hotkey, up.sha256) not in received:
                audit.lost_submissions.append(f"{task_id}/{hotkey[:8]}: acknowledged but never announced")
                continue
            task = state.get(task_id)
            if task is not None and task.state == pb.SCORED and (task_id, hotkey) not in evaluated:
                audit.lost_submissions.append(f"{task_id}/{hotkey[:8]}: announced but not evaluated")
            elif (task_id, hotkey) in results and not results[task_id, hotkey].ok:
                # The fleet's adapters are valid fine-tunes: refusing one is a defect, not a penalty.
                audit.honest_refused.append(f"{task_id}/{hotkey[:8]}: {results[task_id, hotkey].failure_reason}")
            if task is not None and task.state == pb.FAILED and "no submissions" in task.failure_reason:
                audit.lost_submissions.append(f"{task_id}/{hotkey[:8]}: task failed for no submissions")
        return audit


async def read_events(nats_url: str, subjects) -> dict[str, list]:
    """Every message so far on each subject (an ordered, ephemeral consumer per subject)."""
    bus = await EventBus.connect(nats_url, "reliability-audit")
    out: dict[str, list] = {}
    try:
        for subject in subjects:
            sub = await bus.js.subscribe(subject, ordered_consumer=True)
            out[subject] = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=1)
                except Exception:  # noqa: BLE001 - nats' TimeoutError: nothing more
                    break
                out[subject].append(events.message_type(subject).FromString(msg.data))
            await sub.unsubscribe()
    finally:
        await bus.stop(1)
    return out


__all__ = ["CUSTOMER_ACCOUNT", "Audit", "RoundHarness", "RoundOptions", "SERVICES", "TERMINAL", "read_events"]
