"""task_service and selector together, with 10 SDK miners: PENDING → … → TRAINING, a silent
miner counted as a decline, and DELAYED (with more time) until miners connect."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from gradients.runtime import ServiceHost, events
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.selector.service import SPEC as SELECTOR
from services.selector.testing import selector_env
from services.task_service.service import SPEC as TASK_SERVICE

sys.path.insert(0, str(Path(__file__).parent))
from test_selector_offers import VALIDATOR, connect, stop_all  # noqa: E402
from test_task_lifecycle import splits, wait_state  # noqa: E402

NAMES = [f"flow-miner-{i}" for i in range(10)]


@pytest.mark.timeout(180)
async def test_delayed_until_miners_connect_then_training(mesh_env):
    from services.selector.testing import dev_keypair

    env = selector_env(
        mesh_env,
        [dev_keypair(n).ss58_address for n in NAMES],
        VALIDATOR.ss58_address,
        OFFER_TIMEOUT_S="1",
        TEXT_POOL_MIN="10",
        TEXT_POOL_MAX="10",
    )
    env.update(
        GRADIENTS_TIME_SCALE="2",
        GRADIENTS_TASK_TICK_S="0.05",
        GRADIENTS_TASK_RETRY_WAIT_HOURS="1.5",
        GRADIENTS_TASK_DELAY_C_HOURS="0.5",
    )
    selector = await ServiceHost.start(SELECTOR, env=env)
    task_service = await ServiceHost.start(TASK_SERVICE, env=env)
    offers_seen: list = []
    miners = []
    async with grpc.aio.insecure_channel(task_service.address) as ch:
        stub = ts_grpc.TaskServiceStub(ch)
        task = (
            await stub.CreateTask(
                ts.CreateTaskRequest(
                    type=pb.INSTRUCT_TEXT, base_model="tiny", hours=1, dataset=pb.DatasetSpec(uri="/d.jsonl")
                )
            )
        ).task
        await wait_state(stub, task.task_id, pb.PREPARING_DATA)
        await task_service.ctx.bus.publish(
            events.DATASET_PREPARED,
            ev.DatasetPrepared(task_id=task.task_id, ok=True, splits=splits()),
            msg_id=f"prepared:{task.task_id}",
        )
        # No miner is connected: the offer round finds nobody, the task is DELAYED with more time.
        delayed = await wait_state(stub, task.task_id, pb.DELAYED, timeout=20)
        assert delayed.delay_attempts == 1 and delayed.hours == pytest.approx(1.5)
        # Ten miners connect while it waits: eight accept, one declines, one never answers.
        behaviours = ["accept"] * 8 + ["decline", "silent"]
        miners = await connect(selector, list(zip(NAMES, behaviours)), offers_seen)
        training = await wait_state(stub, task.task_id, pb.TRAINING, timeout=30)
        accepted = {dev_keypair(n).ss58_address for n, b in zip(NAMES, behaviours) if b == "accept"}
        assert set(training.miner_hotkeys) == accepted  # the silent miner counted as a decline
        assert {hotkey for hotkey, task_id in offers_seen if task_id == task.task_id} == {
            dev_keypair(n).ss58_address for n in NAMES
        }
    await stop_all(miners)
    await task_service.stop(1)
    await selector.stop(1)
