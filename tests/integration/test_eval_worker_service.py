"""eval_worker as a service: jobs from the real work queue, artifacts from the real object store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from gradients.models.tiny import build_tiny_llama
from gradients.runtime import EventBus, ServiceHost, events
from gradients.runtime.artifacts import NatsArtifactStore
from gradients.runtime.embedded import free_port
from gradients.v1 import common_pb2 as pb
from gradients.v1 import eval_worker_pb2, eval_worker_pb2_grpc
from gradients.v1 import events_pb2 as ev
from miner_sdk.archive import pack
from services.eval_worker.service import SPEC
from tests.helpers.submissions import save_random_lora, save_untouched_lora, write_pickled_bin

ROWS = [{"instruction": f"add {i} and {i + 1}", "input": "", "output": f"{2 * i + 1}"} for i in range(12)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = build_tiny_llama(root / "base")
    untouched = save_untouched_lora(base, root / "untouched")
    noisy = save_random_lora(base, root / "noisy", seed=3, scale=2.0)
    pickled = write_pickled_bin(untouched, root / "pickled")
    return base, {"untouched": untouched, "noisy": noisy, "pickled": pickled}


async def publish_job(
    bus: EventBus, store: NatsArtifactStore, base: Path, uploads: dict[str, Path], tmp: Path, task_id: str = "task-1"
) -> None:
    test_key = await store.put_bytes("".join(json.dumps(r) + "\n" for r in ROWS[:6]).encode())
    synth_key = await store.put_bytes("".join(json.dumps(r) + "\n" for r in ROWS[6:]).encode())
    task = pb.Task(
        task_id=task_id,
        type=pb.INSTRUCT_TEXT,
        base_model=str(base),
        base_model_params_b=0.0001,
        hours=1,
        splits=pb.DatasetSplits(
            test=pb.SplitInfo(artifact=test_key, rows=6), synth=pb.SplitInfo(artifact=synth_key, rows=6)
        ),
    )
    task.evaluation.test_weight = 0.7
    job = ev.EvalJobRequested(task=task)
    for seq, (hotkey, folder) in enumerate(uploads.items(), start=1):
        key = await store.put_file(pack(folder, tmp / f"{hotkey}.tar"))
        job.submissions.append(
            pb.Submission(task_id=task_id, miner_hotkey=hotkey, artifact=key, sha256=key, upload_seq=seq)
        )
    await bus.publish(events.EVAL_JOB_REQUESTED, job, msg_id=f"eval-job:{task_id}")


async def test_job_from_the_queue_is_scored_and_hostile_upload_fails_with_reason(mesh_env, models, tmp_path):
    base, adapters = models
    env = dict(mesh_env, GRADIENTS_EVAL_ISOLATE="false")
    host = await ServiceHost.start(SPEC, env=env)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "driver")
    done = await bus.js.subscribe(events.EVAL_COMPLETED, durable="test-completed")
    store = NatsArtifactStore(bus.js)
    await publish_job(
        bus,
        store,
        base,
        {"m-untouched": adapters["untouched"], "m-noisy": adapters["noisy"], "m-pickled": adapters["pickled"]},
        tmp_path,
    )
    msg = await done.next_msg(timeout=120)
    completed = ev.EvalCompleted.FromString(msg.data)
    results = {r.miner_hotkey: r for r in completed.results}
    assert completed.ok and completed.task_id == "task-1"
    assert results["m-untouched"].ok and results["m-noisy"].ok
    assert not results["m-pickled"].ok and "pickle" in results["m-pickled"].failure_reason.lower()
    # An untouched LoRA is the base model: a heavily perturbed one must do worse.
    assert results["m-untouched"].loss_weighted < results["m-noisy"].loss_weighted
    assert len(results["m-untouched"].per_example_test) == 6
    for r in (results["m-untouched"], results["m-noisy"]):
        assert r.loss_weighted == pytest.approx(0.7 * r.loss_test + 0.3 * r.loss_synth, rel=1e-6)
    # The base model itself, scored in the same group; means only, no per-example losses.
    base = completed.baseline
    assert base.ok and base.miner_hotkey == "" and not base.per_example_test and not base.per_example_synth
    assert base.loss_weighted == pytest.approx(results["m-untouched"].loss_weighted, abs=1e-5)
    assert base.loss_weighted == pytest.approx(0.7 * base.loss_test + 0.3 * base.loss_synth, rel=1e-6)
    await bus.stop(1)
    await host.stop(1)


def spawn_worker(env: dict[str, str], name: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {**os.environ, **env, "GRADIENTS_GRPC_PORT": str(port), "GRADIENTS_EVAL_WORKER_ID": name}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.eval_worker"], env=full, stdout=open(log, "ab"), stderr=subprocess.STDOUT
    )
    return proc, f"127.0.0.1:{port}"


async def status(address: str) -> eval_worker_pb2.WorkerStatus | None:
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            return await eval_worker_pb2_grpc.EvalWorkerStub(ch).GetWorkerStatus(
                eval_worker_pb2.GetWorkerStatusRequest(), timeout=2
            )
    except grpc.aio.AioRpcError:
        return None


async def test_status_names_the_device_chosen_not_auto(mesh_env):
    import torch

    host = await ServiceHost.start(SPEC, env=dict(mesh_env, GRADIENTS_EVAL_DEVICE="auto"))
    try:
        st = await status(host.address)
        assert st is not None and st.device == ("cuda" if torch.cuda.is_available() else "cpu")
    finally:
        await host.stop(1)


@pytest.mark.timeout(300)
async def test_worker_killed_mid_job_job_completes_on_another_and_is_published_once(mesh_env, models, tmp_path):
    base, adapters = models
    env = dict(mesh_env, GRADIENTS_BUS_ACK_WAIT_S="3")
    procs = {}
    for name in ("worker-a", "worker-b"):
        proc, address = spawn_worker(env, name, tmp_path / f"{name}.log")
        procs[name] = (proc, address)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "driver")
    store = NatsArtifactStore(bus.js)
    try:
        for _, address in procs.values():
            for _ in range(100):
                if await status(address) is not None:
                    break
                await asyncio.sleep(0.2)
        await publish_job(
            bus, store, base, {"m-untouched": adapters["untouched"], "m-noisy": adapters["noisy"]}, tmp_path
        )
        busy = None
        for _ in range(300):
            for name, (_proc, address) in procs.items():
                st = await status(address)
                if st is not None and st.current_task_id == "task-1":
                    busy = name
            if busy:
                break
            await asyncio.sleep(0.1)
        assert busy, "no worker took the job"
        procs[busy][0].send_signal(signal.SIGKILL)
        procs[busy][0].wait(10)
        survivor = next(n for n in procs if n != busy)

        done = await bus.js.subscribe(events.EVAL_COMPLETED, durable="test-completed-kill")
        msg = await done.next_msg(timeout=200)
        completed = ev.EvalCompleted.FromString(msg.data)
        assert completed.ok and completed.worker == survivor
        assert {r.miner_hotkey for r in completed.results if r.ok} == {"m-untouched", "m-noisy"}
        await asyncio.sleep(2)
        info = await bus.js.stream_info(events.DOMAIN_STREAM.name, subjects_filter=events.EVAL_COMPLETED)
        assert info.state.subjects == {events.EVAL_COMPLETED: 1}  # published once
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        await bus.stop(1)
