"""task_service against real NATS and Redis: the lifecycle driven by the other services' events.

The other services are played by publishing the events they publish (the contract in
events.proto); their own tests cover their side.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from gradients.runtime import EventBus, ServiceHost, events
from gradients.runtime.bus import wait_for
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.task_service.service import SPEC

FAST = {
    "GRADIENTS_TIME_SCALE": "1",  # one nominal hour = one second
    "GRADIENTS_TASK_TICK_S": "0.05",
    "GRADIENTS_TASK_SUBMISSION_GRACE_S": "0.2",
    "GRADIENTS_TASK_RETRY_WAIT_HOURS": "0.3",
    "GRADIENTS_TASK_DELAY_C_HOURS": "0.25",
}


def instruct_request(**kw) -> ts.CreateTaskRequest:
    base = dict(
        type=pb.INSTRUCT_TEXT,
        base_model="tiny-llama",
        base_model_params_b=0.001,
        hours=1,
        dataset=pb.DatasetSpec(uri="/data/rows.jsonl"),
    )
    base.update(kw)
    return ts.CreateTaskRequest(**base)


async def state_of(stub, task_id: str) -> int:
    return (await stub.GetTask(ts.GetTaskRequest(task_id=task_id))).state


async def wait_state(stub, task_id: str, state: int, timeout: float = 15) -> pb.Task:
    async def reached() -> bool:
        return await state_of(stub, task_id) == state

    assert await wait_for(reached, timeout), (
        f"expected {pb.TaskState.Name(state)}, task is {pb.TaskState.Name(await state_of(stub, task_id))}"
    )
    return await stub.GetTask(ts.GetTaskRequest(task_id=task_id))


def splits(rows: int = 100) -> pb.DatasetSplits:
    return pb.DatasetSplits(
        train=pb.SplitInfo(artifact="a" * 64, sha256="a" * 64, rows=rows - 10),
        test=pb.SplitInfo(artifact="b" * 64, sha256="b" * 64, rows=10),
        schema=["instruction", "output"],
    )


async def selected(bus: EventBus, task_id: str, accepted: list[str], attempt: int, deadline_s: float) -> None:
    msg = ev.MinersSelected(task_id=task_id, accepted=accepted, attempt=attempt)
    msg.deadline.FromSeconds(int(time.time() + deadline_s))
    await bus.publish(events.MINERS_SELECTED, msg, msg_id=f"selected:{task_id}:{attempt}")


@pytest.fixture
async def service(mesh_env):
    env = dict(mesh_env, **FAST)
    host = await ServiceHost.start(SPEC, env=env)
    channel = grpc.aio.insecure_channel(host.address)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    yield host, ts_grpc.TaskServiceStub(channel), bus
    await bus.stop(1)
    await channel.close()
    await host.stop(1)


async def test_task_runs_pending_to_scored(service):
    host, stub, bus = service
    jobs = await bus.js.pull_subscribe(events.EVAL_JOB_REQUESTED, durable="test-eval-workers")
    task = (await stub.CreateTask(instruct_request())).task
    assert task.state == pb.PENDING and task.organic
    updates: list[str] = []

    async def watch():
        async for update in stub.WatchTask(ts.WatchTaskRequest(task_id=task.task_id)):
            updates.append(pb.TaskState.Name(update.task.state))

    watcher = asyncio.create_task(watch())
    await wait_state(stub, task.task_id, pb.PREPARING_DATA)
    await bus.publish(
        events.DATASET_PREPARED,
        ev.DatasetPrepared(task_id=task.task_id, ok=True, splits=splits()),
        msg_id=f"prepared:{task.task_id}",
    )
    got = await wait_state(stub, task.task_id, pb.LOOKING_FOR_MINERS)
    assert got.splits.train.rows == 90

    await selected(bus, task.task_id, ["miner-a", "miner-b"], attempt=0, deadline_s=1.5)
    got = await wait_state(stub, task.task_id, pb.TRAINING)
    assert list(got.miner_hotkeys) == ["miner-a", "miner-b"]
    sub = pb.Submission(task_id=task.task_id, miner_hotkey="miner-a", artifact="c" * 64, sha256="c" * 64, upload_seq=1)
    await bus.publish(events.SUBMISSION_RECEIVED, ev.SubmissionReceived(submission=sub), msg_id="submission:1")
    newer = pb.Submission(
        task_id=task.task_id, miner_hotkey="miner-a", artifact="d" * 64, sha256="d" * 64, upload_seq=2
    )
    await bus.publish(events.SUBMISSION_RECEIVED, ev.SubmissionReceived(submission=newer), msg_id="submission:2")

    await wait_state(stub, task.task_id, pb.EVALUATING, timeout=10)
    (job_msg,) = await jobs.fetch(1, timeout=5)
    job = ev.EvalJobRequested.FromString(job_msg.data)
    assert job.task.task_id == task.task_id
    assert [(s.miner_hotkey, s.sha256) for s in job.submissions] == [("miner-a", "d" * 64)]  # the later upload
    await job_msg.ack()

    await bus.publish(events.TASK_SCORED, ev.TaskScored(task_id=task.task_id), msg_id=f"scored:{task.task_id}")
    await wait_state(stub, task.task_id, pb.SCORED)
    await asyncio.wait_for(watcher, 5)
    assert updates == [
        "PENDING",
        "PREPARING_DATA",
        "LOOKING_FOR_MINERS",
        "TRAINING",
        "PREEVALUATION",
        "EVALUATING",
        "SCORED",
    ] or updates[0] in ("PENDING", "PREPARING_DATA")
    assert updates[-1] == "SCORED"


async def test_too_few_miners_delays_with_more_time_then_trains(service):
    host, stub, bus = service
    task = (await stub.CreateTask(instruct_request(hours=2))).task
    await wait_state(stub, task.task_id, pb.PREPARING_DATA)
    await bus.publish(
        events.DATASET_PREPARED,
        ev.DatasetPrepared(task_id=task.task_id, ok=True, splits=splits()),
        msg_id=f"prepared:{task.task_id}",
    )
    await wait_state(stub, task.task_id, pb.LOOKING_FOR_MINERS)
    await selected(bus, task.task_id, [], attempt=0, deadline_s=2)
    delayed = await wait_state(stub, task.task_id, pb.DELAYED)
    assert delayed.delay_attempts == 1
    assert delayed.hours == pytest.approx(2 + 0.25 * 1)  # dt_delay = dt_initial + c*attempts
    # After the retry wait (0.3 nominal hours = 0.3 s here) it looks for miners again.
    again = await wait_state(stub, task.task_id, pb.LOOKING_FOR_MINERS, timeout=10)
    assert again.delay_attempts == 1
    await selected(bus, task.task_id, ["late-miner"], attempt=1, deadline_s=30)
    trained = await wait_state(stub, task.task_id, pb.TRAINING)
    assert list(trained.miner_hotkeys) == ["late-miner"] and trained.hours == pytest.approx(2.25)


async def test_no_miners_after_the_maximum_delays_fails(mesh_env):
    env = dict(mesh_env, **FAST, GRADIENTS_TASK_MAX_DELAYS="0")
    host = await ServiceHost.start(SPEC, env=env)
    async with grpc.aio.insecure_channel(host.address) as ch:
        stub = ts_grpc.TaskServiceStub(ch)
        bus = host.ctx.bus
        task = (await stub.CreateTask(instruct_request())).task
        await wait_state(stub, task.task_id, pb.PREPARING_DATA)
        await bus.publish(
            events.DATASET_PREPARED,
            ev.DatasetPrepared(task_id=task.task_id, ok=True, splits=splits()),
            msg_id=f"prepared:{task.task_id}",
        )
        await wait_state(stub, task.task_id, pb.LOOKING_FOR_MINERS)
        await selected(bus, task.task_id, [], attempt=0, deadline_s=2)
        failed = await wait_state(stub, task.task_id, pb.FAILED)
        assert failed.failure_reason.startswith("no miners")
    await host.stop(1)


async def test_bad_dataset_fails_with_reason_visible_in_get_task(service):
    host, stub, bus = service
    task = (await stub.CreateTask(instruct_request())).task
    await wait_state(stub, task.task_id, pb.PREPARING_DATA)
    await bus.publish(
        events.DATASET_PREPARED,
        ev.DatasetPrepared(task_id=task.task_id, ok=False, failure_reason="dataset is empty"),
        msg_id=f"prepared:{task.task_id}",
    )
    failed = await wait_state(stub, task.task_id, pb.FAILED)
    assert failed.failure_reason == "data preparation: dataset is empty"


async def test_no_submissions_fails_the_task(service):
    host, stub, bus = service
    task = (await stub.CreateTask(instruct_request())).task
    await wait_state(stub, task.task_id, pb.PREPARING_DATA)
    await bus.publish(
        events.DATASET_PREPARED,
        ev.DatasetPrepared(task_id=task.task_id, ok=True, splits=splits()),
        msg_id=f"prepared:{task.task_id}",
    )
    await wait_state(stub, task.task_id, pb.LOOKING_FOR_MINERS)
    await selected(bus, task.task_id, ["m"], attempt=0, deadline_s=0.5)
    failed = await wait_state(stub, task.task_id, pb.FAILED, timeout=10)
    assert "no submissions" in failed.failure_reason


@pytest.mark.parametrize(
    "request_kw, field",
    [
        (dict(type=pb.TASK_TYPE_UNSPECIFIED), "type"),
        (dict(base_model=""), "base_model"),
        (dict(hours=-1), "hours"),
        (dict(dataset=pb.DatasetSpec()), "dataset.uri"),
        (
            dict(type=pb.DPO, dataset=pb.DatasetSpec(uri="/d", column_mapping={"prompt": "q", "chosen": "a"})),
            "dataset.column_mapping[rejected]",
        ),
        (dict(type=pb.GRPO), "reward_functions"),
        (dict(type=pb.GRPO, reward_functions=[pb.RewardFunction(name="vibes", weight=1)]), "reward_functions[0].name"),
        (
            dict(type=pb.GRPO, reward_functions=[pb.RewardFunction(name="code", weight=1, code="def f(:")]),
            "reward_functions[0].code",
        ),
        (dict(type=pb.IMAGE, dataset=pb.DatasetSpec(), images=[ts.ImageItem(path="/a.png")]), "images[0].caption"),
    ],
)
async def test_invalid_create_requests_name_the_field(service, request_kw, field):
    host, stub, bus = service
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateTask(instruct_request(**request_kw))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")


async def test_list_filters_pages_and_cancel(service):
    host, stub, bus = service
    ids = [(await stub.CreateTask(instruct_request(request_id=f"r{i}"))).task.task_id for i in range(3)]
    dpo = (await stub.CreateTask(instruct_request(type=pb.DPO))).task.task_id
    # The same request id returns the same task (client retry).
    assert (await stub.CreateTask(instruct_request(request_id="r0"))).task.task_id == ids[0]
    page1 = await stub.ListTasks(ts.ListTasksRequest(type=pb.INSTRUCT_TEXT, page_size=2))
    page2 = await stub.ListTasks(
        ts.ListTasksRequest(type=pb.INSTRUCT_TEXT, page_size=2, page_token=page1.next_page_token)
    )
    assert [t.task_id for t in page1.tasks] + [t.task_id for t in page2.tasks] == ids and not page2.next_page_token
    cancelled = await stub.CancelTask(ts.CancelTaskRequest(task_id=dpo, reason="customer changed their mind"))
    assert cancelled.state == pb.CANCELLED
    listed = await stub.ListTasks(ts.ListTasksRequest(state=pb.CANCELLED))
    assert [t.task_id for t in listed.tasks] == [dpo]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CancelTask(ts.CancelTaskRequest(task_id=dpo))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetTask(ts.GetTaskRequest(task_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_organic_first_then_synthetic_fills_up_to_the_cap(mesh_env, tmp_path):
    pools = tmp_path / "pools.json"
    pools.write_text(
        json.dumps(
            {
                "base_models": {"INSTRUCT_TEXT": ["tiny-llama"]},
                "datasets": {"INSTRUCT_TEXT": [{"uri": "/data/syn.jsonl", "rows": 500}]},
            }
        )
    )
    env = dict(
        mesh_env,
        **FAST,
        GRADIENTS_TASK_MAX_ACTIVE="3",
        GRADIENTS_TASK_MAX_SYNTHETIC="1",
        GRADIENTS_TASK_SYNTHETIC_ENABLED="true",
        GRADIENTS_TASK_SYNTHETIC_MIX="1,0,0,0",
        GRADIENTS_TASK_SYNTHETIC_POOLS=str(pools),
        GRADIENTS_TASK_SYNTHETIC_SEED="7",
    )
    host = await ServiceHost.start(SPEC, env=env)
    async with grpc.aio.insecure_channel(host.address) as ch:
        stub = ts_grpc.TaskServiceStub(ch)
        organic = [(await stub.CreateTask(instruct_request())).task.task_id for _ in range(2)]

        async def three_running() -> bool:
            listed = await stub.ListTasks(ts.ListTasksRequest(state=pb.PREPARING_DATA))
            return len(listed.tasks) == 3

        assert await wait_for(three_running, 10)
        await asyncio.sleep(0.5)  # more ticks: the cap holds
        running = (await stub.ListTasks(ts.ListTasksRequest(state=pb.PREPARING_DATA))).tasks
        assert {t.task_id for t in running if t.organic} == set(organic)
        synthetic = [t for t in running if not t.organic]
        assert len(synthetic) == 1 and synthetic[0].type == pb.INSTRUCT_TEXT
        assert 1 <= synthetic[0].hours <= 3  # eq 4, below 10k rows
    await host.stop(1)


async def test_a_synthetic_task_left_pending_by_a_crash_is_started(mesh_env, tmp_path):
    pools = tmp_path / "pools.json"
    pools.write_text(
        json.dumps(
            {
                "base_models": {"INSTRUCT_TEXT": ["tiny-llama"]},
                "datasets": {"INSTRUCT_TEXT": [{"uri": "/data/syn.jsonl", "rows": 500}]},
            }
        )
    )
    # A predecessor created (and counted) its one allowed synthetic task, then crashed before
    # starting it: the task sits in Redis, PENDING.
    host = await ServiceHost.start(SPEC, env=dict(mesh_env, **FAST))
    left = pb.Task(
        task_id="synthetic-left-pending",
        type=pb.INSTRUCT_TEXT,
        organic=False,
        base_model="tiny-llama",
        dataset=pb.DatasetSpec(uri="/data/syn.jsonl", row_count=500),
        hours=2,
        initial_hours=2,
    )
    await host.ctx.components.lifecycle.create(left)
    await host.ctx.store.redis.incr(host.ctx.store.key("synthetic-created"))
    await asyncio.sleep(0.3)  # ticks with synthetic tasks off: it stays PENDING
    assert await host.ctx.components.lifecycle.ids_in(pb.PENDING) == [left.task_id]
    await host.stop(1)

    env = dict(
        mesh_env,
        **FAST,
        GRADIENTS_TASK_MAX_ACTIVE="3",
        GRADIENTS_TASK_MAX_SYNTHETIC="1",
        GRADIENTS_TASK_SYNTHETIC_ENABLED="true",
        GRADIENTS_TASK_SYNTHETIC_MIX="1,0,0,0",
        GRADIENTS_TASK_SYNTHETIC_POOLS=str(pools),
        GRADIENTS_TASK_SYNTHETIC_LIMIT="1",
    )
    host = await ServiceHost.start(SPEC, env=env)
    async with grpc.aio.insecure_channel(host.address) as ch:
        stub = ts_grpc.TaskServiceStub(ch)
        await wait_state(stub, left.task_id, pb.PREPARING_DATA, timeout=10)
        await asyncio.sleep(0.3)
        listed = (await stub.ListTasks(ts.ListTasksRequest())).tasks
        assert [t.task_id for t in listed] == [left.task_id]  # started in place of a new one, limit kept
    await host.stop(1)


# ---- crash and resume --------------------------------------------------------------------


def spawn_task_service(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    full = {**os.environ, **env, "GRADIENTS_GRPC_PORT": str(port), "GRADIENTS_LOG_FORMAT": "text"}
    return subprocess.Popen(
        [sys.executable, "-m", "services.task_service"], env=full, stdout=open(log, "ab"), stderr=subprocess.STDOUT
    )


async def test_kill_9_mid_task_and_restart_resumes_without_lost_or_repeated_transitions(mesh_env, tmp_path):
    from gradients.runtime.embedded import free_port

    env = dict(mesh_env, **FAST)
    port = free_port()
    proc = spawn_task_service(env, port, tmp_path / "ts.log")
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    history = await bus.js.subscribe(events.TASK_STATE_CHANGED, durable="test-history")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = ts_grpc.TaskServiceStub(channel)
    try:
        await channel.channel_ready()
        task = (await stub.CreateTask(instruct_request())).task
        await wait_state(stub, task.task_id, pb.PREPARING_DATA)
        await bus.publish(
            events.DATASET_PREPARED,
            ev.DatasetPrepared(task_id=task.task_id, ok=True, splits=splits()),
            msg_id=f"prepared:{task.task_id}",
        )
        await wait_state(stub, task.task_id, pb.LOOKING_FOR_MINERS)
        await selected(bus, task.task_id, ["m1"], attempt=0, deadline_s=3)
        await wait_state(stub, task.task_id, pb.TRAINING)
        sub = pb.Submission(task_id=task.task_id, miner_hotkey="m1", artifact="e" * 64, sha256="e" * 64, upload_seq=1)
        await bus.publish(events.SUBMISSION_RECEIVED, ev.SubmissionReceived(submission=sub), msg_id="sub-m1")

        proc.send_signal(signal.SIGKILL)  # mid-task: training, deadline pending
        proc.wait(10)
        # Events arriving while it is down are kept by JetStream.
        await bus.publish(
            events.SUBMISSION_RECEIVED, ev.SubmissionReceived(submission=sub), msg_id="sub-m1"
        )  # a duplicate publish
        await asyncio.sleep(1.0)
        proc = spawn_task_service(env, port, tmp_path / "ts.log")
        await channel.channel_ready()
        await wait_state(stub, task.task_id, pb.EVALUATING, timeout=20)
        await bus.publish(events.TASK_SCORED, ev.TaskScored(task_id=task.task_id), msg_id=f"scored:{task.task_id}")
        await wait_state(stub, task.task_id, pb.SCORED)
        # Kill again after the end and restart: nothing moves, nothing is re-published.
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = spawn_task_service(env, port, tmp_path / "ts.log")
        await channel.channel_ready()
        await asyncio.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        await channel.close()

    transitions = []
    while True:
        try:
            msg = await history.next_msg(timeout=1)
        except Exception:
            break
        change = ev.TaskStateChanged.FromString(msg.data)
        if change.task_id == task.task_id:
            transitions.append((change.version, pb.TaskState.Name(change.to_state)))
    await bus.stop(1)
    assert transitions == [
        (2, "PREPARING_DATA"),
        (3, "LOOKING_FOR_MINERS"),
        (4, "TRAINING"),
        (5, "PREEVALUATION"),
        (6, "EVALUATING"),
        (7, "SCORED"),
    ]
