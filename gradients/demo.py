"""`gradients demo`: a full tournament round on one machine.

Embedded NATS and Redis, the six services, N reference miners with mixed strategies, and
synthetic tasks over procedurally generated datasets: real dataset preparation (with a
synthetic split), selection and offers, training, uploads, evaluation, scoring and weights
written to the local ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gradients.mesh import Mesh, MeshOptions
from gradients.models import procedural
from gradients.runtime.auth import dev_keypair
from gradients.runtime.embedded import spawn

# Miner i runs STRATEGIES[i % len]: the first three as before, then the tuned ones.
STRATEGIES = ("autotrain-default", "lr-sweep", "random-search", "lr-range-cosine", "successive-halving")
DEFAULT_STRATEGY = "autotrain-default"
TYPE_NAMES = {"instruct": "INSTRUCT_TEXT", "dpo": "DPO", "grpo": "GRPO", "image": "IMAGE"}
TERMINAL = {"SCORED", "FAILED", "CANCELLED"}
LOCAL_ACCOUNT = "local"


@dataclass
class DemoOptions:
    data_dir: Path = Path(".data/demo")
    miners: int = 6
    tasks: int = 2
    types: tuple[str, ...] = ("instruct",)
    model: str = "tiny"
    time_scale: float = 15.0  # real seconds per nominal hour: 1-3 h tasks train for 15-45 s
    rows: int = 120
    concurrent: int = 2
    timeout_s: float = 600.0
    seed: int = 0
    otlp_endpoint: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class MinerProcess:
    name: str
    strategy: str
    hotkey: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class TaskLossSummary:
    """One task's outcome for the summary: the winner's L_weighted against the base model's
    (EvalCompleted.baseline) and the best autotrain-default miner's (None when none took part
    or it failed)."""

    task_id: str
    winner: str  # hotkey of rank 1
    winner_loss: float
    base_loss: float | None
    default_loss: float | None
    default_miner: str = ""


def task_loss_summary(evaluation, scored, strategy_of) -> TaskLossSummary | None:
    """From a task's EvalCompleted and TaskScored; strategy_of(hotkey) names a miner's strategy."""
    if evaluation is None or scored is None:
        return None
    first = [s for s in scored.scores if s.rank == 1]
    losses = {r.miner_hotkey: r.loss_weighted for r in evaluation.results if r.ok}
    if not first or first[0].miner_hotkey not in losses:
        return None
    winner = first[0].miner_hotkey
    defaults = sorted((loss, hk) for hk, loss in losses.items() if strategy_of(hk) == DEFAULT_STRATEGY)
    base = evaluation.baseline.loss_weighted if evaluation.HasField("baseline") and evaluation.baseline.ok else None
    return TaskLossSummary(
        scored.task_id,
        winner,
        losses[winner],
        base,
        defaults[0][0] if defaults else None,
        defaults[0][1] if defaults else "",
    )


@dataclass
class DemoSnapshot:
    tasks: list = field(default_factory=list)
    leaderboard: list = field(default_factory=list)
    weights: object | None = None
    miners_connected: int = 0


# ---- assets ---------------------------------------------------------------------------


def build_base_model(options: DemoOptions) -> tuple[Path, float]:
    """(model folder, parameters in billions)."""
    models = options.data_dir / "models"
    if options.model == "tiny":
        from gradients.models.tiny import build_tiny_llama

        path = models / "tiny-llama"
        if not (path / "config.json").exists():
            build_tiny_llama(path, seed=options.seed)
    elif options.model == "smollm2":
        from gradients.models.smollm2 import export_smollm2

        path = export_smollm2(models / "smollm2-135m")
    else:
        raise ValueError(f"unknown model {options.model!r}: tiny or smollm2")
    import json as _json

    cfg = _json.loads((path / "config.json").read_text())
    params = _approx_params(cfg)
    return path, params / 1e9


def _approx_params(cfg: dict) -> float:
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    return layers * (4 * h * h + 3 * h * i) + 2 * v * h


def write_pools(options: DemoOptions, base: Path, params_b: float) -> Path:
    data = options.data_dir / "datasets"
    pools: dict = {"base_models": {}, "datasets": {}, "reward_functions": {}, "params_b": {str(base): params_b}}
    for kind in options.types:
        type_name = TYPE_NAMES[kind]
        if kind == "instruct":
            refs = []
            for family in procedural.FAMILIES:
                path = procedural.write_jsonl(
                    procedural.generate(family, options.rows, options.seed), data / f"{family}.jsonl"
                )
                refs.append({"uri": str(path), "rows": options.rows})
            pools["datasets"][type_name] = refs
            pools["base_models"][type_name] = [str(base)]
        elif kind == "dpo":
            path = procedural.write_jsonl(procedural.preference_rows(options.rows, options.seed), data / "dpo.jsonl")
            pools["datasets"][type_name] = [{"uri": str(path), "rows": options.rows}]
            pools["base_models"][type_name] = [str(base)]
        elif kind == "grpo":
            path = procedural.write_jsonl(procedural.reward_rows(options.rows, options.seed), data / "grpo.jsonl")
            pools["datasets"][type_name] = [{"uri": str(path), "rows": options.rows}]
            pools["base_models"][type_name] = [str(base)]
            pools["reward_functions"][type_name] = [
                {"name": "numeric_match", "weight": 1.0, "params": {"column": "answer"}},
                {"name": "length", "weight": 0.1, "params": {"target": "8"}},
            ]
        elif kind == "image":
            from services.dataset_prep.tiny_image import build_tiny_sd_pipeline

            pipe = options.data_dir / "models" / "tiny-sd"
            if not (pipe / "model_index.json").exists():
                build_tiny_sd_pipeline(pipe, seed=options.seed)
            folder = procedural.image_folder(data / "images", max(20, options.rows // 4), options.seed)
            pools["datasets"][type_name] = [{"uri": str(folder), "rows": max(20, options.rows // 4)}]
            pools["base_models"][type_name] = [str(pipe)]
        else:
            raise ValueError(f"unknown task type {kind!r}: one of {', '.join(TYPE_NAMES)}")
    path = options.data_dir / "pools.json"
    path.write_text(json.dumps(pools, indent=2))
    return path


def synthetic_mix(types: tuple[str, ...]) -> str:
    chosen = [TYPE_NAMES[t] for t in types]
    share = 1.0 / len(chosen)
    return ",".join(str(share if name in chosen else 0.0) for name in ("INSTRUCT_TEXT", "DPO", "GRPO", "IMAGE"))


def covering_seed(types: tuple[str, ...], tasks: int, pools: Path, start: int = 0, tries: int = 1000) -> int:
    """The first seed >= start whose first `tasks` synthetic draws include every type of `types`.

    It replays task_service's draws (eq 1, then base model, dataset and hours per task, the
    order `next_tasks_to_start` uses them), so a demo of several types shows each of them.
    When that cannot be (fewer tasks than types, or no seed found) it is `start`.
    """
    import random

    from services.task_service.logic import next_tasks_to_start
    from services.task_service.settings import load_pools, parse_mix

    wanted = {TYPE_NAMES[t] for t in types}
    if tasks < len(wanted):
        return start
    mix, loaded = parse_mix(synthetic_mix(types)), load_pools(pools)
    for seed in range(start, start + tries):
        rng = random.Random(seed)
        drawn = {next_tasks_to_start([], 0, 1, 1, rng, loaded, mix).synthetic[0].task_type.name for _ in range(tasks)}
        if wanted <= drawn:
            return seed
    return start


def pool_share_env(options: DemoOptions) -> dict[str, str]:
    """Selector pool sizes for the demo's few miners.

    The paper's pools (8-15 text, 15-25 image miners) would give the first of two concurrent
    tasks every demo miner and starve the other (FAILED: no miners): each task draws its share.
    """
    share = str(max(2, options.miners // max(1, options.concurrent)))
    return {f"GRADIENTS_SELECTOR_{kind}_POOL_{end}": share for kind in ("TEXT", "IMAGE") for end in ("MIN", "MAX")}


def mesh_env(
    options: DemoOptions, pools: Path, validator_ss58: str, miner_hotkeys: list[str], prompt_model: Path | None = None
) -> dict[str, str]:
    """`prompt_model`: the text model that writes image tasks' new prompts (their base is a
    diffusers pipeline); the demo passes its own small text model, so image tasks run offline."""
    env = {
        "GRADIENTS_TIME_SCALE": str(options.time_scale),
        "GRADIENTS_TASK_SYNTHETIC_ENABLED": "true",
        "GRADIENTS_TASK_SYNTHETIC_POOLS": str(pools),
        "GRADIENTS_TASK_SYNTHETIC_MIX": synthetic_mix(options.types),
        "GRADIENTS_TASK_SYNTHETIC_LIMIT": str(options.tasks),
        "GRADIENTS_TASK_SYNTHETIC_SEED": str(covering_seed(options.types, options.tasks, pools, options.seed)),
        "GRADIENTS_TASK_MAX_SYNTHETIC": str(options.concurrent),
        "GRADIENTS_TASK_MAX_ACTIVE": str(options.concurrent),
        "GRADIENTS_TASK_RETRY_WAIT_HOURS": "0.2",
        "GRADIENTS_TASK_TICK_S": "0.25",
        "GRADIENTS_SELECTOR_ALLOWED_HOTKEYS": ",".join(miner_hotkeys),
        "GRADIENTS_SELECTOR_VALIDATOR_HOTKEY": validator_ss58,
        "GRADIENTS_DATASET_MAX_SYNTH_ROWS": "12",
        "GRADIENTS_DATASET_LOCAL_MAX_NEW_TOKENS": "48",
        "GRADIENTS_DATASET_IMAGE_STEPS": "4",
        "GRADIENTS_EVAL_IMAGE_SEEDS_PER_LEVEL": "1",
        "GRADIENTS_EVAL_IMAGE_STEPS": "4",
        "GRADIENTS_EVAL_GRPO_GENERATIONS": "2",
        "GRADIENTS_EVAL_GRPO_MAX_NEW_TOKENS": "12",
        "GRADIENTS_CHAIN_BACKEND": "ledger",
        "GRADIENTS_BUS_ACK_WAIT_S": "15",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    if prompt_model is not None and "image" in options.types:
        env["GRADIENTS_DATASET_PROMPT_MODEL_PATH"] = str(prompt_model)
    env.update(options.extra_env)
    return env


# ---- the round ------------------------------------------------------------------------


# What one round leaves in the demo's folder: the mesh (NATS, Redis, ledger, logs) and the miners'
# work. Models and datasets stay: they are built only when missing.
ROUND_STATE = ("mesh", "miners")


def clear_previous_round(data_dir: Path) -> None:
    """Remove an earlier round's state: its tasks, scores and weights would be counted as this
    round's (a second `gradients demo --tasks 2` after an 8-task round showed "8 of 8 scored")."""
    for name in ROUND_STATE:
        shutil.rmtree(data_dir / name, ignore_errors=True)


class Demo:
    def __init__(self, options: DemoOptions):
        self.options = options
        self.options.data_dir = Path(options.data_dir).resolve()
        self.mesh: Mesh | None = None
        self.miners: list[MinerProcess] = []
        self.validator = dev_keypair("gradients-demo-validator")
        self.started = time.monotonic()
        self.names: dict[str, tuple[str, str]] = {}  # hotkey -> (miner name, strategy)
        self.uids: dict[str, int] = {}
        self.api_key = ""  # of the customer account `local` (shown in the summary, never stored)

    def start(self, status=lambda msg: None) -> None:
        opts = self.options
        opts.data_dir.mkdir(parents=True, exist_ok=True)
        clear_previous_round(opts.data_dir)
        status("building the base model and the datasets…")
        base, params_b = build_base_model(opts)
        pools = write_pools(opts, base, params_b)
        keys = [dev_keypair(f"gradients-demo-miner-{i + 1}") for i in range(opts.miners)]
        env = {
            **pool_share_env(opts),
            **mesh_env(opts, pools, self.validator.ss58_address, [k.ss58_address for k in keys], prompt_model=base),
        }
        # Ledger uids: miner i is uid i (on a chain the metagraph says).
        self.uids = {k.ss58_address: i for i, k in enumerate(keys)}
        uid_file = opts.data_dir / "ledger-uids.json"
        uid_file.write_text(json.dumps(self.uids))
        env.setdefault("GRADIENTS_CHAIN_LEDGER_UIDS", str(uid_file))
        status("starting NATS, Redis and the six services…")
        self.mesh = Mesh(MeshOptions(data_dir=opts.data_dir / "mesh", otlp_endpoint=opts.otlp_endpoint, extra_env=env))
        self.mesh.start()
        self.mesh.wait_ready()
        # A customer key for trying the customer CLI against the demo's mesh while it runs.
        self.api_key = self.mesh.ensure_account(LOCAL_ACCOUNT)
        self.mesh.publish(self.mesh.operator_info(LOCAL_ACCOUNT))
        status(f"starting {opts.miners} miners…")
        for i, key in enumerate(keys):
            self.spawn_miner(i, key.ss58_address)

    def spawn_miner(self, index: int, hotkey: str) -> None:
        name = f"miner-{index + 1}"
        strategy = STRATEGIES[index % len(STRATEGIES)]
        log_path = self.options.data_dir / "mesh" / "logs" / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "gradients.cli",
            "miner",
            "run",
            "--validator",
            self.mesh.addresses["selector"],
            "--validator-hotkey",
            self.validator.ss58_address,
            "--strategy",
            strategy,
            "--dev-key",
            f"gradients-demo-miner-{index + 1}",
            "--work-dir",
            str(self.options.data_dir / "miners" / name),
            "--seed",
            str(index),
            "--upload-margin",
            str(max(2.0, self.options.time_scale * 0.15)),
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        process = spawn(cmd, log_path, env)
        self.miners.append(MinerProcess(name, strategy, hotkey, process, log_path))
        self.names[hotkey] = (name, strategy)

    async def snapshot(self) -> DemoSnapshot:
        from gradients.v1 import (
            chain_bridge_pb2,
            chain_bridge_pb2_grpc,
            scorer_pb2,
            scorer_pb2_grpc,
            selector_pb2,
            selector_pb2_grpc,
        )

        snap = DemoSnapshot()
        addresses = self.mesh.addresses
        # The round's tasks are synthetic: no customer account owns them, so TaskService (which
        # shows an account its own tasks) does not list them; the records do.
        snap.tasks = await self.mesh.tasks()
        try:
            async with grpc.aio.insecure_channel(addresses["scorer"]) as ch:
                board = await scorer_pb2_grpc.ScorerStub(ch).GetLeaderboard(
                    scorer_pb2.GetLeaderboardRequest(), timeout=5
                )
                snap.leaderboard = list(board.entries)
        except grpc.aio.AioRpcError:
            pass
        try:
            async with grpc.aio.insecure_channel(addresses["chain_bridge"]) as ch:
                snap.weights = await chain_bridge_pb2_grpc.ChainBridgeStub(ch).GetLastWeights(
                    chain_bridge_pb2.GetLastWeightsRequest(), timeout=5
                )
        except grpc.aio.AioRpcError:
            snap.weights = None
        try:
            async with grpc.aio.insecure_channel(addresses["selector"]) as ch:
                miners = await selector_pb2_grpc.SelectorStub(ch).ListMiners(
                    selector_pb2.ListMinersRequest(), timeout=5
                )
                snap.miners_connected = sum(1 for m in miners.miners if m.connected)
        except grpc.aio.AioRpcError:
            pass
        return snap

    async def task_summaries(self) -> list[TaskLossSummary]:
        """Per scored task: the winner's loss against the base's and the default strategy's,
        read from task_service's result records (the base's losses are kept only there)."""
        from gradients.runtime.store import Store
        from services.task_service.results import ResultStore

        store = Store.from_url(self.mesh.redis_url, self.mesh.service_env().get("GRADIENTS_NAMESPACE") or "gm")
        out = []
        try:
            results = ResultStore(store)
            for task in await self.mesh.tasks():
                record = await results.get(task.task_id)
                summary = task_loss_summary(
                    record.evaluation, record.scored, lambda hk: self.names.get(hk, ("?", "?"))[1]
                )
                if summary is not None:
                    out.append(summary)
        finally:
            await store.close()
        return out

    def finished(self, snap: DemoSnapshot) -> bool:
        from gradients.v1 import common_pb2 as pb

        states = [pb.TaskState.Name(t.state) for t in snap.tasks]
        if len(states) < self.options.tasks or not all(s in TERMINAL for s in states):
            return False
        if "SCORED" in states:  # weights follow the last score
            return snap.weights is not None and snap.weights.sequence > 0 and bool(snap.leaderboard)
        return True

    def dead(self) -> list[str]:
        dead = [f"{c.name} (exit {c.process.returncode})" for c in self.mesh.dead_children()] if self.mesh else []
        dead += [f"{m.name} (exit {m.process.returncode})" for m in self.miners if m.process.poll() is not None]
        return dead

    def stop(self) -> None:
        for miner in self.miners:
            if miner.process.poll() is None:
                miner.process.send_signal(signal.SIGTERM)
        for miner in self.miners:
            try:
                miner.process.wait(15)
            except subprocess.TimeoutExpired:
                miner.process.kill()
        if self.mesh:
            self.mesh.stop()


async def run_round(demo: Demo, on_update=lambda snap: None) -> DemoSnapshot:
    """Poll the mesh until every task ended and weights followed; raises on timeout or a death."""
    deadline = time.monotonic() + demo.options.timeout_s
    while True:
        snap = await demo.snapshot()
        on_update(snap)
        if demo.finished(snap):
            return snap
        dead = demo.dead()
        if dead:
            raise RuntimeError(f"process died during the demo: {', '.join(dead)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the round did not finish within {demo.options.timeout_s:.0f}s")
        await asyncio.sleep(0.5)
