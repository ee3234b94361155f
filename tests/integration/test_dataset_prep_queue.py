"""Preparation on the jobs.prepare work queue: two dataset_prep processes share it, and a
replica killed with SIGKILL mid-preparation leaves its job to the other.

Real processes on real NATS and Redis: task_service in-process (it moves the tasks to
PREPARING_DATA and on), two `python -m services.dataset_prep` children. Their generator is
the OpenAI-compatible backend pointed at a chat-completions server on 127.0.0.1 that holds
every request until the test opens its gate, so the test knows both replicas are mid-
preparation (each holding one task) before it kills one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from benchmarks.reliability.generator_endpoint import read_prompt
from gradients.mesh import check_health
from gradients.runtime import EventBus, ServiceHost, events
from gradients.runtime.bus import wait_for
from gradients.runtime.embedded import free_port, spawn
from gradients.splits import read_split_artifact
from gradients.v1 import common_pb2 as pb
from gradients.v1 import dataset_prep_pb2 as dp
from gradients.v1 import dataset_prep_pb2_grpc as dp_grpc
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.dataset_prep.handlers import WORK_DURABLE
from services.task_service.service import SPEC as TASK_SERVICE

ROOT = Path(__file__).resolve().parents[2]


class GatedChatServer:
    """Chat completions that wait for `gate`; remembers which datasets' rows it has seen."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.seen: list[str] = []  # instruction of every request's source row
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                keys, source = read_prompt(prompt)
                server.seen.append(source.get("instruction", ""))
                server.gate.wait(60)
                content = json.dumps({k: f"new {source.get(k, 'text')}" for k in keys})
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the replica that asked was killed meanwhile
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def rows(tag: str, n: int) -> str:
    return "".join(
        json.dumps({"instruction": f"{tag} question {i}", "output": f"{tag} answer {i}"}) + "\n" for i in range(n)
    )


def replica_env(mesh_env: dict[str, str], server: GatedChatServer, port: int, data_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        **mesh_env,
        "GRADIENTS_GRPC_PORT": str(port),
        "GRADIENTS_DATASET_GENERATOR": "openai",
        "GRADIENTS_DATASET_OPENAI_BASE_URL": server.base_url,
        "GRADIENTS_DATASET_OPENAI_MODEL": "gated",
        "GRADIENTS_DATASET_OPENAI_CONCURRENCY": "2",
        "GRADIENTS_DATASET_MAX_SYNTH_ROWS": "4",
        "GRADIENTS_DATASET_CONCURRENCY": "1",
        "GRADIENTS_DATASET_LOCAL_ROOTS": str(data_root),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def preparing_replica(log: Path, task_id: str) -> list[int]:
    """Deliveries of `task_id` this replica's log says it started preparing."""
    return [
        int(m)
        for m in re.findall(
            rf"task {task_id}: preparing on replica \S+ \(delivery (\d+)\)", log.read_text(errors="replace")
        )
    ]


async def read_prepared(bus: EventBus, task_ids: set[str]) -> list[ev.DatasetPrepared]:
    sub = await bus.js.subscribe(events.DATASET_PREPARED, ordered_consumer=True)
    out = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except Exception:  # nats' TimeoutError: nothing more
            break
        prepared = ev.DatasetPrepared.FromString(msg.data)
        if prepared.task_id in task_ids:
            out.append(prepared)
    await sub.unsubscribe()
    return out


@pytest.mark.timeout(240)
async def test_replicas_share_jobs_and_a_killed_replica_job_is_finished_once(mesh_env, tmp_path):
    server = GatedChatServer()
    data = tmp_path / "datasets"
    data.mkdir()
    (data / "alpha.jsonl").write_text(rows("alpha", 20))
    (data / "beta.jsonl").write_text(rows("beta", 20))
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = [free_port(), free_port()]
    replicas = [
        spawn(
            [sys.executable, "-m", "services.dataset_prep"],
            logs / f"prep-{i}.log",
            replica_env(mesh_env, server, port, data),
        )
        for i, port in enumerate(ports)
    ]
    task_host = await ServiceHost.start(
        TASK_SERVICE, env={**mesh_env, "GRADIENTS_TIME_SCALE": "1", "GRADIENTS_TASK_TICK_S": "0.05"}
    )
    bus = await EventBus.connect(mesh_env["GRADIENTS_NATS_URL"], "test-driver")
    channel = grpc.aio.insecure_channel(task_host.address)
    try:
        assert await wait_for(lambda: _all_serving(ports), 90, interval=0.25), [
            (log.name, log.read_text()[-2000:]) for log in logs.iterdir()
        ]
        tasks = ts_grpc.TaskServiceStub(channel)
        ids = {}
        for tag in ("alpha", "beta"):
            created = await tasks.CreateTask(
                ts.CreateTaskRequest(
                    type=pb.INSTRUCT_TEXT,
                    base_model="hub-org/any-model",
                    base_model_params_b=0.1,
                    hours=1,
                    dataset=pb.DatasetSpec(uri=str(data / f"{tag}.jsonl"), format="jsonl"),
                ),
                timeout=15,
            )
            ids[tag] = created.task.task_id

        # Each replica runs one preparation at a time: both datasets reach the generator
        # together only if the two replicas took one job each.
        async def both_generating() -> bool:
            return {s.split()[0] for s in server.seen} == {"alpha", "beta"}

        assert await wait_for(both_generating, 60, interval=0.1), server.seen
        holders = {
            tag: [i for i in range(2) if preparing_replica(logs / f"prep-{i}.log", task_id)]
            for tag, task_id in ids.items()
        }
        assert sorted(holders["alpha"] + holders["beta"]) == [0, 1], holders
        (victim,) = holders["alpha"]
        replicas[victim].send_signal(signal.SIGKILL)
        replicas[victim].wait(10)
        server.gate.set()

        async def settled() -> bool:
            states = [(await tasks.GetTask(ts.GetTaskRequest(task_id=t), timeout=5)).state for t in ids.values()]
            return all(s == pb.LOOKING_FOR_MINERS for s in states)

        assert await wait_for(settled, 60, interval=0.2), [
            (await tasks.GetTask(ts.GetTaskRequest(task_id=t), timeout=5)) for t in ids.values()
        ]

        survivor = 1 - victim
        # The killed replica's job came back (after the ack wait) to the survivor, delivery 2.
        assert preparing_replica(logs / f"prep-{survivor}.log", ids["alpha"]) == [2]
        assert preparing_replica(logs / f"prep-{victim}.log", ids["alpha"]) == [1]
        # One result per task, stored and announced once.
        prepared = await read_prepared(bus, set(ids.values()))
        assert sorted(p.task_id for p in prepared) == sorted(ids.values())
        assert all(p.ok for p in prepared), [p.failure_reason for p in prepared]
        info = await bus.js.consumer_info(events.JOBS_STREAM.name, WORK_DURABLE)
        assert info.num_pending == 0 and info.num_ack_pending == 0

        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[survivor]}") as prep_channel:
            splits = await dp_grpc.DatasetPrepStub(prep_channel).GetSplits(
                dp.GetSplitsRequest(task_id=ids["alpha"]), timeout=15
            )
        assert (splits.train.rows, splits.test.rows, splits.synth.rows) == (18, 2, 4)
        synth, _ = read_split_artifact(await task_host.ctx.artifacts.get_bytes(splits.synth.artifact))
        assert all(row["instruction"].startswith("new alpha question") for row in synth)
    finally:
        server.close()
        await channel.close()
        await bus.stop(1)
        for process in replicas:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in replicas:
            try:
                process.wait(15)
            except Exception:
                process.kill()
        await task_host.stop(1)


async def _all_serving(ports: list[int]) -> bool:
    states = await asyncio.gather(*(asyncio.to_thread(check_health, f"127.0.0.1:{p}") for p in ports))
    return all(s == "SERVING" for s in states)
