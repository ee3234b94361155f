"""Regressions found by the bad-input fuzzer (benchmarks/reliability/fuzz.py), one per defect."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradients.runtime import ServiceHost
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.task_service.service import SPEC as TASK_SERVICE


async def test_health_watch_streams_the_serving_status(mesh_env):
    """grpc's health Watch writes with context.write() (a coroutine, not an async generator);
    the error interceptor used to iterate it and answer INTERNAL on every service."""
    host = await ServiceHost.start(TASK_SERVICE, env=mesh_env)
    try:
        async with grpc.aio.insecure_channel(host.address) as ch:
            call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
            first = await asyncio.wait_for(call.read(), 10)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            call.cancel()

            unknown = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10
            )
            reply = await asyncio.wait_for(unknown.read(), 10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            unknown.cancel()
    finally:
        await host.stop(1)


@pytest.mark.parametrize(
    "field, request_kwargs", [("state", {"state": 9643111}), ("state", {"state": -1}), ("type", {"type": 65536})]
)
async def test_list_tasks_with_an_unknown_enum_number_is_an_invalid_argument(mesh_env, field, request_kwargs):
    """Proto3 enums carry any int32; an unknown TaskState used to raise ValueError (INTERNAL)."""
    host = await ServiceHost.start(TASK_SERVICE, env=mesh_env)
    try:
        async with grpc.aio.insecure_channel(host.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ts_grpc.TaskServiceStub(ch).ListTasks(ts.ListTasksRequest(**request_kwargs), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(f"{field}: ")
            reply = await ts_grpc.TaskServiceStub(ch).ListTasks(ts.ListTasksRequest(state=pb.SCORED), timeout=10)
            assert list(reply.tasks) == []
    finally:
        await host.stop(1)


async def test_backing_store_away_is_unavailable_with_a_reason_not_internal(mesh_env, redis_server):
    """Found by the reliability suite (cluster fault): handlers hitting a Redis or NATS outage answered
    INTERNAL, so clients gave up; UNAVAILABLE tells them to retry (the miner SDK does)."""
    import grpc

    from gradients.runtime import ServiceHost
    from gradients.v1 import task_service_pb2 as ts
    from gradients.v1 import task_service_pb2_grpc as ts_grpc
    from services.task_service.service import SPEC

    host = await ServiceHost.start(SPEC, env=mesh_env)
    try:
        redis_server.stop()
        async with grpc.aio.insecure_channel(host.address) as channel:
            try:
                await ts_grpc.TaskServiceStub(channel).GetTask(ts.GetTaskRequest(task_id="any"), timeout=30)
                raise AssertionError("GetTask answered while Redis was down")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
                assert "temporarily unavailable" in exc.details() and "retry" in exc.details()
    finally:
        redis_server.restart()
        await host.stop(1)
