"""The event bus against a real nats-server and redis-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradients.runtime import Consumer, EventBus, ServiceHost, Store, events, telemetry
from gradients.runtime.bus import DLQ_REASON, DLQ_SUBJECT, wait_for
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.task_service.service import SPEC as TASK_SERVICE

HERE = Path(__file__).parent


def task_created(task_id: str) -> ev.TaskCreated:
    return ev.TaskCreated(task=pb.Task(task_id=task_id, type=pb.INSTRUCT_TEXT, state=pb.PENDING))


async def counting_consumer(store: Store, durable: str, seen: list) -> Consumer:
    async def handle(event: ev.TaskCreated, delivery):
        seen.append((event.task.task_id, delivery.num_delivered))
        await store.apply_once(durable, delivery.msg_id, lambda pipe: pipe.incr(store.key("effect", durable)))

    return Consumer(durable, events.TASK_CREATED, handle)


async def effect_count(store: Store, durable: str) -> int:
    return int(await store.redis.get(store.key("effect", durable)) or 0)


async def test_one_event_reaches_each_consumer_group_once(nats_server, redis_server):
    publisher = await EventBus.connect(nats_server.url, "publisher")
    a_bus = await EventBus.connect(nats_server.url, "group-a")
    b_bus = await EventBus.connect(nats_server.url, "group-b")
    store = Store.from_url(redis_server.url)
    seen_a, seen_b = [], []
    await a_bus.start([await counting_consumer(store, "group-a", seen_a)])
    await b_bus.start([await counting_consumer(store, "group-b", seen_b)])

    await publisher.publish(events.TASK_CREATED, task_created("t1"), msg_id="task-created:t1")
    # The same event published again (a retried publisher) is de-duplicated by Nats-Msg-Id.
    await publisher.publish(events.TASK_CREATED, task_created("t1"), msg_id="task-created:t1")

    assert await wait_for(lambda: _both(store), timeout=10)
    await asyncio.sleep(0.5)  # room for any (wrong) second delivery
    assert seen_a == [("t1", 1)] and seen_b == [("t1", 1)]
    assert await effect_count(store, "group-a") == 1 and await effect_count(store, "group-b") == 1
    for bus in (publisher, a_bus, b_bus):
        await bus.stop(1)
    await store.close()


async def _both(store: Store) -> bool:
    return await effect_count(store, "group-a") == 1 and await effect_count(store, "group-b") == 1


async def test_consumer_killed_before_ack_gets_redelivery_and_effect_applies_once(nats_server, redis_server):
    durable = "crash-group"
    store = Store.from_url(redis_server.url)
    publisher = await EventBus.connect(nats_server.url, "publisher")
    await publisher.publish(events.TASK_CREATED, task_created("t2"), msg_id="task-created:t2")

    child = subprocess.run(
        [sys.executable, str(HERE / "crashing_consumer.py"), nats_server.url, redis_server.url, durable],
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert child.returncode == 9, child.stderr
    assert await effect_count(store, durable) == 1  # effect stored, message not acked

    seen: list = []
    survivor = await EventBus.connect(nats_server.url, "survivor", ack_wait_s=1.0)
    await survivor.start([await counting_consumer(store, durable, seen)])
    assert await wait_for(lambda: _seen(seen), timeout=15)
    await asyncio.sleep(1.5)  # the redelivery was acked: no third delivery
    assert seen == [("t2", 2)]  # redelivered: second delivery of the same message
    assert await effect_count(store, durable) == 1  # ... with no second effect
    await survivor.stop(1)
    await publisher.stop(1)
    await store.close()


async def _seen(seen) -> bool:
    return bool(seen)


async def test_malformed_payload_is_dead_lettered_after_the_bound_and_service_stays_serving(mesh_env):
    host = await ServiceHost.start(TASK_SERVICE, env=mesh_env)
    attempts: list[int] = []

    async def handle(event, delivery):  # never reached for an undecodable payload
        attempts.append(delivery.num_delivered)

    bus = host.ctx.bus
    await bus.start([Consumer("strict-group", events.TASK_CREATED, handle)])
    dlq = await bus.js.subscribe(events.dead_letter_subject("strict-group"), durable="dlq-reader")

    await bus.publish_raw(events.TASK_CREATED, b"\x0a\xff\xff\xff\x0f garbage", msg_id="garbage-1")
    letter = await dlq.next_msg(timeout=20)
    assert letter.data == b"\x0a\xff\xff\xff\x0f garbage"
    assert "MalformedEvent" in letter.headers[DLQ_REASON] and "gradients.v1.TaskCreated" in letter.headers[DLQ_REASON]
    assert letter.headers[DLQ_SUBJECT] == events.TASK_CREATED
    assert attempts == []

    # A good event after the bad one is still processed, and the service is SERVING.
    await bus.publish(events.TASK_CREATED, task_created("ok"), msg_id="task-created:ok")
    assert await wait_for(lambda: _seen(attempts), timeout=10)
    async with grpc.aio.insecure_channel(host.address) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await host.stop(1)


async def test_garbage_grpc_request_gets_invalid_argument_and_service_stays_serving(mesh_env):
    host = await ServiceHost.start(TASK_SERVICE, env=mesh_env)
    async with grpc.aio.insecure_channel(host.address) as ch:
        raw = ch.unary_unary("/gradients.v1.TaskService/CreateTask")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\x0a\xff\xff\xff\x0f")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request for /gradients.v1.TaskService/CreateTask" in err.value.details()

        stub = ts_grpc.TaskServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateTask(ts.CreateTaskRequest(type=pb.INSTRUCT_TEXT, dataset=pb.DatasetSpec(uri="x")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "base_model: is required"

        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await host.stop(1)


async def test_one_trace_spans_the_grpc_call_and_the_nats_hop(mesh_env, span_exporter):
    span_exporter.clear()
    host = await ServiceHost.start(TASK_SERVICE, env=mesh_env)
    consumed: list[str] = []

    async def handle(event: ev.TaskCreated, delivery):
        consumed.append(event.task.task_id)

    await host.ctx.bus.start([Consumer("trace-reader", events.TASK_CREATED, handle)])
    tracer = telemetry.tracer("test")
    with tracer.start_as_current_span("customer creates a task") as root:
        channel = grpc.aio.insecure_channel(host.address, interceptors=telemetry.grpc_client_interceptors())
        reply = await ts_grpc.TaskServiceStub(channel).CreateTask(
            ts.CreateTaskRequest(type=pb.INSTRUCT_TEXT, base_model="tiny", dataset=pb.DatasetSpec(uri="/d.jsonl"))
        )
        await channel.close()
    assert await wait_for(lambda: _seen(consumed), timeout=10)
    await host.stop(1)

    trace_id = root.get_span_context().trace_id
    spans = [s for s in span_exporter.get_finished_spans() if s.context.trace_id == trace_id]
    names = {s.name for s in spans}
    assert "/gradients.v1.TaskService/CreateTask" in names  # gRPC server span
    assert f"send {events.TASK_CREATED}" in names  # PRODUCER
    consumer = [s for s in spans if s.name == f"process {events.TASK_CREATED}"]
    assert consumer and consumer[0].attributes["messaging.consumer.group.name"] == "trace-reader"
    assert consumer[0].attributes["messaging.system"] == "nats"
    assert consumed == [reply.task.task_id]


async def test_redis_outage_longer_than_the_delivery_bound_loses_no_event(nats_server, redis_server):
    """Connection errors are transient: retried with backoff beyond max_deliver, never dead-lettered."""
    bus = await EventBus.connect(nats_server.url, "outage", max_deliver=2, nak_delay_s=0.1, ack_wait_s=5)
    store = Store.from_url(redis_server.url)
    seen: list = []
    await bus.start([await counting_consumer(store, "outage", seen)])
    dead = await bus.js.subscribe(events.dead_letter_subject("outage"))
    redis_server.stop()
    for i in range(3):
        await bus.publish(events.TASK_CREATED, task_created(f"o{i}"), msg_id=f"task-created:o{i}")
    # Each event fails several times while Redis is away (far more than max_deliver = 2).
    assert await wait_for(lambda: _failed_at_least(seen, 3), timeout=20)
    redis_server.restart()
    assert await wait_for(lambda: _effects(store, "outage", 3), timeout=40)
    with pytest.raises(Exception):  # noqa: B017  (nothing dead-lettered: next_msg times out)
        await dead.next_msg(timeout=0.5)
    await bus.stop(1)
    await store.close()


async def _failed_at_least(seen: list, times: int) -> bool:
    return any(n >= times for _, n in seen)


async def _effects(store: Store, durable: str, n: int) -> bool:
    try:
        return await effect_count(store, durable) == n
    except Exception:
        return False


async def test_streams_get_age_and_size_limits_and_an_older_config_is_updated_at_start(mesh_env):
    from nats.js import api as js_api

    from gradients.runtime import ServiceSpec

    # Streams as an earlier version created them: no age or size limit.
    driver = await EventBus.connect(mesh_env["GRADIENTS_NATS_URL"], "driver")
    for stream in events.STREAMS:
        await driver.js.delete_stream(stream.name)
        await driver.js.add_stream(
            name=stream.name,
            subjects=list(stream.subjects),
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.WORK_QUEUE if stream.work_queue else js_api.RetentionPolicy.LIMITS,
        )
    await driver.publish(events.TASK_CREATED, task_created("kept"), msg_id="kept")
    spec = ServiceSpec(name="limits-test", default_port=0)
    host = await ServiceHost.start(
        spec, env=dict(mesh_env, GRADIENTS_STREAM_DLQ_MAX_AGE_DAYS="2", GRADIENTS_STREAM_JOBS_MAX_BYTES="5000000")
    )
    try:
        day = 86400.0
        domain = await driver.js.stream_info(events.DOMAIN_STREAM.name)
        assert domain.config.max_age == 14 * day and domain.config.max_bytes == 10 * 1024**3
        assert domain.state.messages == 1  # updated in place, nothing lost
        jobs = (await driver.js.stream_info(events.JOBS_STREAM.name)).config
        assert jobs.max_age == 0 and jobs.max_bytes == 5_000_000 and jobs.discard == "new"  # jobs never expire
        dlq = (await driver.js.stream_info(events.DEAD_LETTER_STREAM.name)).config
        assert dlq.max_age == 2 * day and dlq.max_bytes == 1024**3
    finally:
        await host.stop(1)
        await driver.stop(1)
