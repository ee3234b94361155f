"""task_service's scheduler outlives a failed tick, and a dead background loop stops SERVING.

Found by the reliability suite: Redis away during the scheduler's first outbox flush (outside
its try) ended the scheduler for good — no timer fired again, tasks stayed where they were,
and the service still answered SERVING.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradients.runtime import ServiceHost, ServiceSpec
from gradients.runtime.bus import wait_for
from gradients.runtime.outbox import Outbox
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.task_service.service import SPEC as TASK_SERVICE

sys.path.insert(0, str(Path(__file__).parent))
from test_task_lifecycle import wait_state  # noqa: E402


async def test_scheduler_keeps_running_after_its_first_flush_failed(mesh_env, monkeypatch):
    real_flush = Outbox.flush
    calls = {"n": 0}

    async def flaky_flush(self):
        calls["n"] += 1
        if calls["n"] == 1:  # the scheduler's start-up flush
            raise ConnectionError("Redis briefly away")
        return await real_flush(self)

    monkeypatch.setattr(Outbox, "flush", flaky_flush)
    host = await ServiceHost.start(TASK_SERVICE, env=mesh_env)
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = ts_grpc.TaskServiceStub(channel)
            task = (
                await stub.CreateTask(
                    ts.CreateTaskRequest(
                        type=pb.INSTRUCT_TEXT, base_model="tiny", hours=1, dataset=pb.DatasetSpec(uri="/d.jsonl")
                    )
                )
            ).task
            # Only the scheduler moves PENDING → PREPARING_DATA.
            await wait_state(stub, task.task_id, pb.PREPARING_DATA, timeout=15)
        assert calls["n"] >= 2
    finally:
        await host.stop(1)


async def test_a_background_loop_that_died_makes_the_service_not_serving(mesh_env):
    async def broken_loop() -> None:
        raise RuntimeError("loop bug")

    spec = ServiceSpec(name="dying-loop", default_port=0, background=lambda ctx: [broken_loop()])
    host = await ServiceHost.start(spec, env=mesh_env)
    try:

        async def not_serving() -> bool:
            async with grpc.aio.insecure_channel(host.address) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

        assert await wait_for(not_serving, timeout=10)
    finally:
        await host.stop(1)
