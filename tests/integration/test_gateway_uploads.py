"""Training data downloads, submission uploads and results through the miner gateway
(docs/flow.md step 6), against real NATS (events, artifact store) and Redis."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import grpc
import pytest

from gradients.runtime import ServiceHost, events
from gradients.runtime.auth import sign_call
from gradients.runtime.bus import wait_for
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import miner_gateway_pb2 as gw
from gradients.v1 import miner_gateway_pb2_grpc as gw_grpc
from miner_sdk.archive import pack, safe_extract
from miner_sdk.client import GatewayRefused, MinerClient
from services.selector.gateway import UPLOAD
from services.selector.service import SPEC
from services.selector.testing import EventCollector, dev_keypair, make_task, publish_state, selector_env

VALIDATOR = dev_keypair("validator")
IN_TASK = dev_keypair("in-task")
OUTSIDER = dev_keypair("outsider")  # allowed on the validator, not a miner of the task
MAX_UPLOAD = 200_000
TRAIN_DATA = b"".join(b'{"instruction": "say %d", "output": "%d"}\n' % (i, i) for i in range(400))


@pytest.fixture
async def gateway(mesh_env):
    env = selector_env(
        mesh_env,
        [IN_TASK.ss58_address, OUTSIDER.ss58_address],
        VALIDATOR.ss58_address,
        MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        CHUNK_BYTES="4096",
    )
    host = await ServiceHost.start(SPEC, env=env)
    yield host
    await host.stop(1)


async def open_task(host, deadline_in_s: float = 60.0, miners=(IN_TASK.ss58_address,)) -> pb.Task:
    """What task_service announces when a task starts TRAINING."""
    key = await host.ctx.artifacts.put_bytes(TRAIN_DATA)
    task = make_task(miners=miners, deadline_s=time.time() + deadline_in_s, train_artifact=key, train_rows=400)
    await publish_state(host.ctx.bus, task, pb.TRAINING, version=5)
    tasks = host.ctx.components.tasks
    assert await wait_for(lambda: tasks.exists(task.task_id), timeout=10)
    return task


def client(host, key) -> MinerClient:
    return MinerClient(host.address, key, VALIDATOR.ss58_address, chunk_bytes=8192)


def model_folder(root: Path, size: int = 50_000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (root / "adapter_model.safetensors").write_bytes(os.urandom(size))
    return root


async def raw_upload(host, key, chunks: list[gw.UploadChunk]) -> gw.UploadResponse:
    async def stream():
        for c in chunks:
            yield c

    metadata = sign_call(key, UPLOAD, chunks[0].SerializeToString(), VALIDATOR.ss58_address)
    async with grpc.aio.insecure_channel(host.address) as channel:
        return await gw_grpc.MinerGatewayStub(channel).UploadSubmission(stream(), metadata=metadata)


def chunked(task_id: str, data: bytes, size: int = 10_000, kind: str = "adapter") -> list[gw.UploadChunk]:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    chunks = [gw.UploadChunk(data=p, chunk_sha256=hashlib.sha256(p).hexdigest()) for p in parts]
    first = chunks[0]
    first.task_id, first.sha256, first.total_bytes, first.kind = (
        task_id,
        hashlib.sha256(data).hexdigest(),
        len(data),
        kind,
    )
    return chunks


async def test_download_and_a_valid_upload_round_trip_byte_for_byte(gateway, nats_server, tmp_path):
    received = await EventCollector.start(nats_server.url, events.SUBMISSION_RECEIVED)
    task = await open_task(gateway)
    async with client(gateway, IN_TASK) as miner:
        path = await miner.download_training_data(task.task_id, tmp_path / "train.jsonl")
        assert path.read_bytes() == TRAIN_DATA  # 4 KiB chunks, sha256-checked

        folder = model_folder(tmp_path / "adapter")
        submission = await miner.submit(task.task_id, folder)
    assert (submission.task_id, submission.miner_hotkey, submission.kind) == (
        task.task_id,
        IN_TASK.ss58_address,
        "adapter",
    )
    assert submission.upload_seq == 1 and submission.artifact == submission.sha256

    # The stored artifact is exactly the archive the SDK packed, and unpacks to the same files.
    stored = await gateway.ctx.artifacts.get_bytes(submission.artifact)
    assert stored == pack(folder, tmp_path / "expected.tar").read_bytes()
    (tmp_path / "stored.tar").write_bytes(stored)
    safe_extract(tmp_path / "stored.tar", tmp_path / "unpacked")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "unpacked" / name).read_bytes() == (folder / name).read_bytes()

    event, msg_id = await received.next()
    assert event.submission == submission
    assert msg_id == f"submission:{task.task_id}:{IN_TASK.ss58_address}:{submission.sha256}"
    await received.stop()


async def test_a_later_upload_replaces_an_earlier_one(gateway, tmp_path):
    task = await open_task(gateway)
    async with client(gateway, IN_TASK) as miner:
        first = await miner.submit(task.task_id, model_folder(tmp_path / "v1"))
        second = await miner.submit(task.task_id, model_folder(tmp_path / "v2"))
        again = await miner.submit(task.task_id, tmp_path / "v2")
    assert second.upload_seq > first.upload_seq and second.sha256 != first.sha256
    assert again == second  # the same archive again changes nothing
    latest = await gateway.ctx.components.submissions.latest(task.task_id, IN_TASK.ss58_address)
    assert latest == second


async def test_a_corrupted_chunk_is_refused(gateway):
    task = await open_task(gateway)
    chunks = chunked(task.task_id, os.urandom(30_000))
    chunks[1].data = b"X" + chunks[1].data[1:]  # flipped in transit; its chunk_sha256 is the original's
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_upload(gateway, IN_TASK, chunks)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_sha256" in info.value.details() and "chunk 1" in info.value.details()


async def test_a_whole_archive_that_does_not_match_its_sha256_is_refused(gateway):
    task = await open_task(gateway)
    chunks = chunked(task.task_id, os.urandom(20_000))
    chunks[0].sha256 = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_upload(gateway, IN_TASK, chunks)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in info.value.details()


async def test_oversize_uploads_are_refused(gateway, tmp_path):
    task = await open_task(gateway)
    async with client(gateway, IN_TASK) as miner:
        with pytest.raises(GatewayRefused) as info:
            await miner.submit(task.task_id, model_folder(tmp_path / "big", size=MAX_UPLOAD + 1))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "upload limit" in info.value.details
    # Announcing a small size and sending more is caught as the bytes arrive.
    chunks = chunked(task.task_id, os.urandom(30_000))
    chunks[0].total_bytes = 15_000
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await raw_upload(gateway, IN_TASK, chunks)
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_upload_after_the_deadline_is_refused(gateway, tmp_path):
    task = await open_task(gateway, deadline_in_s=-1)
    async with client(gateway, IN_TASK) as miner:
        with pytest.raises(GatewayRefused) as info:
            await miner.submit(task.task_id, model_folder(tmp_path / "late"))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "deadline" in info.value.details


async def test_upload_and_download_need_membership_of_the_task(gateway, tmp_path):
    task = await open_task(gateway)
    async with client(gateway, OUTSIDER) as outsider:
        with pytest.raises(GatewayRefused) as up:
            await outsider.submit(task.task_id, model_folder(tmp_path / "m"))
        with pytest.raises(GatewayRefused) as down:
            await outsider.download_training_data(task.task_id, tmp_path / "d.jsonl")
        with pytest.raises(GatewayRefused) as unknown:
            await outsider.download_training_data("no-such-task", tmp_path / "d.jsonl", wait_s=0.3)
    assert up.value.code == grpc.StatusCode.PERMISSION_DENIED and "not a miner of task" in up.value.details
    assert down.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert not (tmp_path / "d.jsonl").exists()


async def test_uploads_stop_when_the_task_leaves_training(gateway, tmp_path):
    task = await open_task(gateway)
    await publish_state(gateway.ctx.bus, task, pb.PREEVALUATION, version=6)
    tasks = gateway.ctx.components.tasks

    async def closed() -> bool:
        return (await tasks.get(task.task_id)).state == pb.PREEVALUATION

    assert await wait_for(closed, timeout=10)
    # A stale event (older version) does not reopen it.
    await publish_state(gateway.ctx.bus, task, pb.TRAINING, version=5, msg_id="late-redelivery")
    async with client(gateway, IN_TASK) as miner:
        with pytest.raises(GatewayRefused) as info:
            await miner.submit(task.task_id, model_folder(tmp_path / "m"))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "PREEVALUATION" in info.value.details


async def test_my_results_shows_only_my_evaluations_and_scores(gateway):
    me, other = IN_TASK.ss58_address, OUTSIDER.ss58_address
    bus = gateway.ctx.bus
    done = ev.EvalCompleted(
        task_id="t-1",
        results=[
            pb.EvaluationResult(miner_hotkey=me, ok=True, loss_test=1.5, loss_weighted=1.6),
            pb.EvaluationResult(miner_hotkey=other, ok=True, loss_test=0.5),
        ],
    )
    await bus.publish(events.EVAL_COMPLETED, done, msg_id="eval:t-1")
    scored = ev.TaskScored(
        task_id="t-1",
        scores=[
            pb.Score(miner_hotkey=me, rank=2, task_score=0.0),
            pb.Score(miner_hotkey=other, rank=1, task_score=3.0),
        ],
    )
    await bus.publish(events.TASK_SCORED, scored, msg_id="scored:t-1")
    await bus.publish(
        events.SCORES_UPDATED,
        ev.ScoresUpdated(scores=[ev.MinerFinalScore(miner_hotkey=me, final_score=0.25)]),
        msg_id="scores:1",
    )
    async with client(gateway, IN_TASK) as miner:

        async def arrived() -> bool:
            reply = await miner.my_results()
            return len(reply.tasks) == 1 and reply.tasks[0].HasField("score") and reply.final_score > 0

        assert await wait_for(arrived, timeout=10)
        reply = await miner.my_results("t-1")
        assert await miner.my_results("other-task") == gw.GetMyResultsResponse(final_score=0.25)
    [item] = reply.tasks
    assert item.task_id == "t-1" and item.result.loss_test == 1.5 and item.score.rank == 2
    assert [r.miner_hotkey for r in reply.results] == [me] and [s.miner_hotkey for s in reply.scores] == [me]
    assert reply.final_score == 0.25


def test_the_gateway_accepts_no_upload_that_eval_would_refuse_by_size():
    from gradients.limits import MAX_SUBMISSION_BYTES, GiB
    from gradients.runtime import load_settings
    from services.eval_worker.job import EvalLimits
    from services.eval_worker.settings import EvalWorkerSettings
    from services.selector.settings import SelectorSettings

    gateway_cap = load_settings(SelectorSettings, {}).max_upload_bytes
    eval_cap = int(load_settings(EvalWorkerSettings, {}).max_upload_gb * GiB)
    assert gateway_cap == eval_cap == EvalLimits().max_adapter_bytes == MAX_SUBMISSION_BYTES
