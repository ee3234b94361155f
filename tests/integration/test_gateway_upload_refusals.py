"""A refused upload of many chunks reaches the miner as the gateway's status and reason.

grpc.aio reports a write into a call the server already answered as INTERNAL "Internal error
from Core" (grpc/grpc#36066), hiding why: found by the hostile-miner scenario
(benchmarks/reliability/hostile.py), where an over-the-cap upload came back INTERNAL. The
gateway now confirms an upload's first chunk before the rest is sent, and the SDK waits for
that verdict."""

from __future__ import annotations

import os
import time

import grpc
import pytest

from gradients.runtime import ServiceHost
from gradients.runtime.bus import wait_for
from gradients.v1 import common_pb2 as pb
from miner_sdk.client import GatewayRefused, MinerClient
from services.selector.service import SPEC
from services.selector.testing import dev_keypair, make_task, publish_state, selector_env

VALIDATOR = dev_keypair("validator")
IN_TASK = dev_keypair("in-task")
OUTSIDER = dev_keypair("outsider")
MODEL_BYTES = 16 * 1024 * 1024  # 16 chunks of the SDK's default 1 MiB
ATTEMPTS = 4


@pytest.fixture
async def gateway(mesh_env):
    env = selector_env(
        mesh_env,
        [IN_TASK.ss58_address, OUTSIDER.ss58_address],
        VALIDATOR.ss58_address,
        MAX_UPLOAD_BYTES=str(10 * MODEL_BYTES),
    )
    host = await ServiceHost.start(SPEC, env=env)
    yield host
    await host.stop(1)


async def open_task(host, deadline_in_s: float) -> pb.Task:
    key = await host.ctx.artifacts.put_bytes(b'{"instruction": "x", "output": "y"}\n')
    task = make_task(
        miners=(IN_TASK.ss58_address,), deadline_s=time.time() + deadline_in_s, train_artifact=key, train_rows=1
    )
    await publish_state(host.ctx.bus, task, pb.TRAINING, version=5)
    tasks = host.ctx.components.tasks
    assert await wait_for(lambda: tasks.exists(task.task_id), timeout=10)
    return task


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big-model")
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(MODEL_BYTES))
    return folder


async def refusals(host, key, task_id: str, folder) -> list[tuple[grpc.StatusCode, str]]:
    out = []
    async with MinerClient(host.address, key, VALIDATOR.ss58_address) as miner:
        for _ in range(ATTEMPTS):
            with pytest.raises(GatewayRefused) as info:
                await miner.submit(task_id, folder)
            out.append((info.value.code, info.value.details))
    return out


async def test_not_a_miner_of_the_task_says_so(gateway, big_model):
    task = await open_task(gateway, deadline_in_s=60)
    for code, details in await refusals(gateway, OUTSIDER, task.task_id, big_model):
        assert code == grpc.StatusCode.PERMISSION_DENIED and "not a miner of task" in details, (code, details)


async def test_a_late_upload_says_the_deadline_passed(gateway, big_model):
    task = await open_task(gateway, deadline_in_s=-1)
    for code, details in await refusals(gateway, IN_TASK, task.task_id, big_model):
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "deadline" in details, (code, details)


async def test_an_accepted_upload_of_many_chunks_still_arrives_whole(gateway, big_model):
    task = await open_task(gateway, deadline_in_s=60)
    async with MinerClient(gateway.address, IN_TASK, VALIDATOR.ss58_address) as miner:
        submission = await miner.submit(task.task_id, big_model)
    assert submission.size_bytes > MODEL_BYTES and submission.upload_seq == 1
    assert len(await gateway.ctx.artifacts.get_bytes(submission.artifact)) == submission.size_bytes
