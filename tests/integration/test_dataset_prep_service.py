"""dataset_prep as a service: task_service and dataset_prep in-process on real NATS and Redis.

Tasks are created through TaskService's gRPC API; task_service moves them to PREPARING_DATA,
dataset_prep prepares the splits with tiny local models and reports back, and the task
ends in LOOKING_FOR_MINERS (with its splits) or FAILED (with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from PIL import Image

from gradients.runtime import ConfigError, EventBus, ServiceHost, events, load_settings
from gradients.runtime.bus import wait_for
from gradients.splits import read_split_artifact
from gradients.v1 import common_pb2 as pb
from gradients.v1 import dataset_prep_pb2 as dp
from gradients.v1 import dataset_prep_pb2_grpc as dp_grpc
from gradients.v1 import events_pb2 as ev
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.dataset_prep.handlers import DURABLE, TaskDataError, parse_image_list
from services.dataset_prep.logic import row_sha256
from services.dataset_prep.service import SPEC as DATASET_PREP
from services.dataset_prep.settings import DatasetPrepSettings
from services.task_service.service import SPEC as TASK_SERVICE

RPC_TIMEOUT_S = 15
TASK_FAST = {"GRADIENTS_TIME_SCALE": "1", "GRADIENTS_TASK_TICK_S": "0.05"}
# Tiny generations: a random tiny model writes a few tokens per field.
PREP_FAST = {
    "GRADIENTS_DATASET_DEVICE": "cpu",
    "GRADIENTS_DATASET_LOCAL_MAX_NEW_TOKENS": "8",
    "GRADIENTS_DATASET_LOCAL_ATTEMPTS": "1",
    "GRADIENTS_DATASET_LOCAL_FALLBACK_MAX_NEW_TOKENS": "8",
    "GRADIENTS_DATASET_IMAGE_STEPS": "2",
    "GRADIENTS_DATASET_IMAGE_MAX_SIDE": "128",
    "GRADIENTS_DATASET_PROGRESS_INTERVAL_S": "0",
}


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    from gradients.models.tiny import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="module")
def weak_llama(tmp_path_factory) -> str:
    from gradients.models.tiny import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("weak-llama"), seed=1))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    from services.dataset_prep.tiny_image import build_tiny_sd_pipeline

    return str(build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd")))


@dataclass
class Mesh:
    tasks: ts_grpc.TaskServiceStub
    prep: dp_grpc.DatasetPrepStub
    prep_host: ServiceHost
    bus: EventBus


async def stop_host(host: ServiceHost) -> None:
    """host.stop(), re-cancelling its background loops until it returns.

    Work-around: a redis-py 8.1 call can complete normally after its task was cancelled,
    so a background loop (task_service's scheduler) may miss the single cancel of
    ServiceHost.stop and keep running, and stop() then waits for it for ever.
    """
    stopping = asyncio.create_task(host.stop(1))
    while not stopping.done():
        await asyncio.wait([stopping], timeout=1)
        for loop_task in host._background:
            loop_task.cancel()
    await stopping


@contextlib.asynccontextmanager
async def running_mesh(mesh_env: dict[str, str], **prep_env: str):
    task_host = await ServiceHost.start(TASK_SERVICE, env={**mesh_env, **TASK_FAST})
    # The tests' organic tasks name files under the test's tmp dir: the operator allows it.
    roots = {"GRADIENTS_DATASET_LOCAL_ROOTS": str(Path(mesh_env["GRADIENTS_DATA_DIR"]).parent)}
    prep_host = await ServiceHost.start(DATASET_PREP, env={**mesh_env, **PREP_FAST, **roots, **prep_env})
    task_channel = grpc.aio.insecure_channel(task_host.address)
    prep_channel = grpc.aio.insecure_channel(prep_host.address)
    bus = await EventBus.connect(mesh_env["GRADIENTS_NATS_URL"], "test-driver")
    try:
        yield Mesh(ts_grpc.TaskServiceStub(task_channel), dp_grpc.DatasetPrepStub(prep_channel), prep_host, bus)
    finally:
        await bus.stop(1)
        await task_channel.close()
        await prep_channel.close()
        await stop_host(prep_host)
        await stop_host(task_host)


async def create_task(mesh: Mesh, request: ts.CreateTaskRequest) -> pb.Task:
    return (await mesh.tasks.CreateTask(request, timeout=RPC_TIMEOUT_S)).task


async def settled(mesh: Mesh, task_id: str, timeout: float = 40) -> pb.Task:
    """The task once dataset preparation is over (LOOKING_FOR_MINERS or FAILED)."""
    final = (pb.LOOKING_FOR_MINERS, pb.FAILED)
    task = pb.Task()

    async def done() -> bool:
        nonlocal task
        task = await mesh.tasks.GetTask(ts.GetTaskRequest(task_id=task_id), timeout=RPC_TIMEOUT_S)
        return task.state in final

    assert await wait_for(done, timeout, interval=0.1), f"task still {pb.TaskState.Name(task.state)}"
    return task


async def read_stream(bus: EventBus, subject: str, message_type, durable: str) -> list:
    """Every message on `subject` so far (a fresh durable consumer reads from the start)."""
    sub = await bus.js.pull_subscribe(subject, durable=durable)
    out = []
    while True:
        try:
            msgs = await sub.fetch(batch=100, timeout=0.5)
        except Exception:  # timeout: nothing more
            break
        for msg in msgs:
            out.append(message_type.FromString(msg.data))
            await msg.ack()
    await sub.unsubscribe()
    return out


async def split_rows(mesh: Mesh, info: pb.SplitInfo) -> tuple[list[dict], dict[str, bytes]]:
    data = await asyncio.wait_for(mesh.prep_host.ctx.artifacts.get_bytes(info.artifact), RPC_TIMEOUT_S)
    assert hashlib.sha256(data).hexdigest() == info.sha256 == info.artifact
    rows, images = read_split_artifact(data)
    assert len(rows) == info.rows
    return rows, images


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def instruct_rows(n: int) -> list[dict]:
    return [{"instruction": f"what is {i} plus {i + 1}", "output": f"the sum is {2 * i + 1}"} for i in range(n)]


def write_images(folder: Path, n: int, bad: int | None = None) -> list[ts.ImageItem]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = folder / f"tile{i}.png"
        if i == bad:
            path.write_bytes(b"this is not an image")
        else:
            Image.new("RGB", (100 + 9 * i, 90), (25 * i, 40, 200)).save(path)
        items.append(ts.ImageItem(path=str(path), caption=f"a blue tile number {i}; square"))
    return items


# ---- the happy path -----------------------------------------------------------------------


async def test_instruct_dataset_is_split_and_synthesised(mesh_env, tmp_path, tiny_llama):
    source = instruct_rows(50)
    uri = write_jsonl(tmp_path / "rows.jsonl", source)
    # No text model configured: the task's own (local) base model writes the synthetic rows.
    async with running_mesh(mesh_env, GRADIENTS_DATASET_MAX_SYNTH_ROWS="5") as mesh:
        started = time.monotonic()
        created = await create_task(
            mesh,
            ts.CreateTaskRequest(
                type=pb.INSTRUCT_TEXT,
                base_model=tiny_llama,
                base_model_params_b=0.001,
                hours=1,
                dataset=pb.DatasetSpec(uri=uri, format="jsonl"),
            ),
        )
        task = await settled(mesh, created.task_id)
        elapsed = time.monotonic() - started
        assert task.state == pb.LOOKING_FOR_MINERS, task.failure_reason
        splits = task.splits
        # §3.3: |D_test| = min(50·0.1, 1000) = 5; |D_synth| = min(50·1.0, κ=5) = 5 requested.
        assert (splits.train.rows, splits.test.rows) == (45, 5)
        assert 2 <= splits.synth.rows <= 5  # at least 25 % of the requested rows must survive
        assert list(splits.schema) == ["instruction", "input", "output"]
        assert await mesh.prep.GetSplits(dp.GetSplitsRequest(task_id=task.task_id), timeout=RPC_TIMEOUT_S) == splits

        train, _ = await split_rows(mesh, splits.train)
        test, _ = await split_rows(mesh, splits.test)
        synth, _ = await split_rows(mesh, splits.synth)
        standard = {row_sha256({**r, "input": ""}) for r in source}
        assert {row_sha256(r) for r in train} | {row_sha256(r) for r in test} == standard
        assert not {row_sha256(r) for r in train} & {row_sha256(r) for r in test}
        for row in synth:
            assert set(row) == set(splits.schema) and row["instruction"].strip() and row["output"].strip()
            assert row_sha256(row) not in standard

        progress = [
            p
            for p in await read_stream(mesh.bus, events.TASK_PROGRESS, ev.TaskProgress, "t-progress")
            if p.task_id == task.task_id
        ]
        stages = [p.stage for p in progress]
        assert {"load", "standardise", "split", "synthesise", "done", "prepared"} <= set(stages)
        synthesised = [p for p in progress if p.stage == "synthesise"]
        assert synthesised[-1].done == synthesised[-1].total == 5
        assert progress[-1].stage == "prepared" and "train 45, test 5" in progress[-1].message

        # A redelivered PREPARING_DATA event re-publishes the stored result, it does not prepare again.
        changes = await read_stream(mesh.bus, events.TASK_STATE_CHANGED, ev.TaskStateChanged, "t-changes")
        (preparing,) = [c for c in changes if c.task_id == task.task_id and c.to_state == pb.PREPARING_DATA]
        await mesh.bus.publish(events.TASK_STATE_CHANGED, preparing, msg_id="redelivered-preparing")

        async def consumed() -> bool:
            info = await mesh.bus.js.consumer_info("GRADIENTS", DURABLE)
            return info.num_pending == 0 and info.num_ack_pending == 0

        assert await wait_for(consumed, 10)
        again = [
            p
            for p in await read_stream(mesh.bus, events.TASK_PROGRESS, ev.TaskProgress, "t-progress-2")
            if p.task_id == task.task_id
        ]
        assert len(again) == len(progress)
        prepared = [
            p
            for p in await read_stream(mesh.bus, events.DATASET_PREPARED, ev.DatasetPrepared, "t-prepared")
            if p.task_id == task.task_id
        ]
        assert len(prepared) == 1 and prepared[0].splits == splits

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await mesh.prep.GetSplits(dp.GetSplitsRequest(task_id="no-such-task"), timeout=RPC_TIMEOUT_S)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        print(f"\ninstruct 50 rows -> LOOKING_FOR_MINERS in {elapsed:.1f}s")


async def test_dpo_dataset_uses_a_weak_model_for_rejected(mesh_env, tmp_path, tiny_llama, weak_llama):
    rows = [{"question": f"name a colour number {i}", "good": f"blue {i}", "bad": f"no {i}"} for i in range(20)]
    uri = write_jsonl(tmp_path / "dpo.jsonl", rows)
    async with running_mesh(
        mesh_env, GRADIENTS_DATASET_MAX_SYNTH_ROWS="3", GRADIENTS_DATASET_WEAK_MODEL_PATH=weak_llama
    ) as mesh:
        created = await create_task(
            mesh,
            ts.CreateTaskRequest(
                type=pb.DPO,
                base_model=tiny_llama,
                base_model_params_b=0.001,
                hours=1,
                dataset=pb.DatasetSpec(
                    uri=uri, column_mapping={"prompt": "question", "chosen": "good", "rejected": "bad"}
                ),
            ),
        )
        task = await settled(mesh, created.task_id)
        assert task.state == pb.LOOKING_FOR_MINERS, task.failure_reason
        assert (task.splits.train.rows, task.splits.test.rows) == (18, 2)
        assert list(task.splits.schema) == ["prompt", "chosen", "rejected"]
        assert 1 <= task.splits.synth.rows <= 3
        synth, _ = await split_rows(mesh, task.splits.synth)
        for row in synth:
            assert set(row) == {"prompt", "chosen", "rejected"}
            assert row["rejected"].strip() and row["rejected"].strip() != row["chosen"].strip()
        test, _ = await split_rows(mesh, task.splits.test)
        assert all(r["chosen"].startswith("blue") and r["rejected"].startswith("no") for r in test)


async def test_image_task_from_an_image_list(mesh_env, tmp_path, tiny_llama, tiny_sd):
    items = write_images(tmp_path / "imgs", 10)
    # The base model is the diffusers pipeline (it draws the new images); captions need a text model.
    async with running_mesh(
        mesh_env, GRADIENTS_DATASET_MAX_SYNTH_ROWS="2", GRADIENTS_DATASET_TEXT_MODEL_PATH=tiny_llama
    ) as mesh:
        created = await create_task(
            mesh,
            ts.CreateTaskRequest(type=pb.IMAGE, base_model=tiny_sd, base_model_params_b=0.001, hours=1, images=items),
        )
        assert created.dataset.format == "image_list"
        task = await settled(mesh, created.task_id)
        assert task.state == pb.LOOKING_FOR_MINERS, task.failure_reason
        assert (task.splits.train.rows, task.splits.test.rows) == (9, 1)
        assert 1 <= task.splits.synth.rows <= 2
        assert list(task.splits.schema) == ["image", "caption"]
        captions = {item.caption for item in items}
        for info, is_source in ((task.splits.train, True), (task.splits.test, True), (task.splits.synth, False)):
            rows, images = await split_rows(mesh, info)
            assert len(images) == len(rows)
            for row in rows:
                width, height = Image.open(io.BytesIO(images[row["image"]])).size
                assert width % 64 == 0 and height % 64 == 0
                assert (row["caption"] in captions) == is_source


# ---- rejected datasets ----------------------------------------------------------------------


async def test_bad_datasets_fail_the_task_with_their_reason(mesh_env, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    mostly_empty = instruct_rows(20)
    for row in mostly_empty[:17]:
        row["output"] = "  "
    cases = {
        "empty": (dict(uri=str(empty)), "dataset is empty"),
        "mostly empty": (
            dict(uri=write_jsonl(tmp_path / "holes.jsonl", mostly_empty)),
            "85.0% of rows (17 of 20) are empty",
        ),
        "missing column": (
            dict(
                uri=write_jsonl(tmp_path / "qa.jsonl", [{"q": "x", "a": "y"}] * 20),
                column_mapping={"instruction": "q", "output": "answer"},
            ),
            "missing mapped column(s): 'answer' (mapped to output)",
        ),
        "too few rows": (
            dict(uri=write_jsonl(tmp_path / "few.jsonl", instruct_rows(6))),
            "too few rows: 6 usable row(s) (of 6); at least 10 are required",
        ),
    }
    # Synthesis off: nothing needs a generator, so a base model that is no model at all is fine.
    async with running_mesh(mesh_env, GRADIENTS_DATASET_SYNTHETIC="false") as mesh:
        ids = {}
        for name, (dataset, _) in cases.items():
            request = ts.CreateTaskRequest(
                type=pb.INSTRUCT_TEXT, base_model="/nowhere/model", hours=1, dataset=pb.DatasetSpec(**dataset)
            )
            ids[name] = (await create_task(mesh, request)).task_id
        bad_image = write_images(tmp_path / "imgs", 10, bad=4)
        ids["unreadable image"] = (
            await create_task(
                mesh, ts.CreateTaskRequest(type=pb.IMAGE, base_model="/nowhere/model", hours=1, images=bad_image)
            )
        ).task_id
        good = write_jsonl(tmp_path / "good.jsonl", instruct_rows(20))
        good_id = (
            await create_task(
                mesh,
                ts.CreateTaskRequest(
                    type=pb.INSTRUCT_TEXT, base_model="/nowhere/model", hours=1, dataset=pb.DatasetSpec(uri=good)
                ),
            )
        ).task_id

        expected = {
            **{name: reason for name, (_, reason) in cases.items()},
            "unreadable image": f"unreadable image {bad_image[4].path}",
        }
        for name, task_id in ids.items():
            task = await settled(mesh, task_id)
            assert task.state == pb.FAILED, name
            assert task.failure_reason.startswith("data preparation: "), task.failure_reason
            assert expected[name] in task.failure_reason, (name, task.failure_reason)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await mesh.prep.GetSplits(dp.GetSplitsRequest(task_id=task_id), timeout=RPC_TIMEOUT_S)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert expected[name] in missing.value.details()

        # GRADIENTS_DATASET_SYNTHETIC=false: D_synth is empty, the rest as usual.
        task = await settled(mesh, good_id)
        assert task.state == pb.LOOKING_FOR_MINERS, task.failure_reason
        assert (task.splits.train.rows, task.splits.test.rows, task.splits.synth.rows) == (18, 2, 0)
        assert await split_rows(mesh, task.splits.synth) == ([], {})


async def test_a_missing_generator_fails_the_task_with_a_reason(mesh_env, tmp_path):
    uri = write_jsonl(tmp_path / "rows.jsonl", instruct_rows(20))
    async with running_mesh(mesh_env) as mesh:
        created = await create_task(
            mesh,
            ts.CreateTaskRequest(
                type=pb.INSTRUCT_TEXT, base_model="hub-org/some-model", hours=1, dataset=pb.DatasetSpec(uri=uri)
            ),
        )
        task = await settled(mesh, created.task_id)
        assert task.state == pb.FAILED
        assert task.failure_reason == (
            "data preparation: no text generator: the base model 'hub-org/some-model' is not a local transformers "
            "model folder; set GRADIENTS_DATASET_TEXT_MODEL_PATH or use GRADIENTS_DATASET_GENERATOR=openai"
        )


# ---- settings and the image list (no servers) ---------------------------------------------------


def test_settings_defaults_follow_the_paper():
    settings = load_settings(DatasetPrepSettings, {})
    config = settings.prep_config()
    assert settings.generator == "local" and settings.synthetic
    assert (config.split.test_fraction, config.split.test_cap) == (0.1, 1000)
    assert (config.split.synth_fraction, config.split.synth_cap) == (1.0, 300)
    assert (config.synthesis.text_temperature, config.synthesis.image_prompt_temperature) == (0.6, 0.4)
    assert (config.limits.min_rows, config.limits.max_empty_fraction) == (10, 0.8)
    off = load_settings(DatasetPrepSettings, {"GRADIENTS_DATASET_SYNTHETIC": "off"}).prep_config()
    assert off.split.synth_cap == 0


def test_auto_dtype_is_bfloat16_for_text_models_only_on_a_cpu_that_has_it(monkeypatch):
    from services.dataset_prep import handlers

    settings = load_settings(DatasetPrepSettings, {})
    monkeypatch.setattr(handlers, "_cpu_has_native_bfloat16", lambda: True)
    assert handlers.resolved_dtype(settings, "cpu", text_model=True) == "bfloat16"
    assert handlers.resolved_dtype(settings, "cpu") == "float32"  # diffusion pipelines
    assert handlers.resolved_dtype(settings, "cuda") == "bfloat16"
    forced = load_settings(DatasetPrepSettings, {"GRADIENTS_DATASET_DTYPE": "float32"})
    assert handlers.resolved_dtype(forced, "cpu", text_model=True) == "float32"
    monkeypatch.setattr(handlers, "_cpu_has_native_bfloat16", lambda: False)
    assert handlers.resolved_dtype(settings, "cpu", text_model=True) == "float32"


def test_warm_up_loads_the_configured_text_model_that_jobs_then_reuse(tmp_path):
    from gradients.models.tiny import build_tiny_llama
    from services.dataset_prep import handlers

    path = str(build_tiny_llama(tmp_path / "tiny", seed=0))
    settings = load_settings(
        DatasetPrepSettings, {"GRADIENTS_DATASET_TEXT_MODEL_PATH": path, "GRADIENTS_DATASET_DEVICE": "cpu"}
    )
    cache = handlers.GeneratorCache(2)
    handlers.warm_up(settings, cache)
    assert list(cache._items) == [handlers._local_config(settings, path)]
    loaded = next(iter(cache._items.values()))
    assert cache.get(handlers._local_config(settings, path)) is loaded
    remote = {
        "GRADIENTS_DATASET_GENERATOR": "openai",
        "GRADIENTS_DATASET_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "GRADIENTS_DATASET_OPENAI_MODEL": "m",
    }
    untouched = handlers.GeneratorCache(2)
    handlers.warm_up(load_settings(DatasetPrepSettings, remote), untouched)  # nothing local to load
    assert not untouched._items


@pytest.mark.parametrize(
    "env, problem",
    [
        (
            {"GRADIENTS_DATASET_GENERATOR": "openai"},
            "GRADIENTS_DATASET_OPENAI_BASE_URL is required when GRADIENTS_DATASET_GENERATOR=openai",
        ),
        (
            {"GRADIENTS_DATASET_GENERATOR": "openai", "GRADIENTS_DATASET_OPENAI_BASE_URL": "http://h:8000/v1"},
            "GRADIENTS_DATASET_OPENAI_MODEL is required",
        ),
        ({"GRADIENTS_DATASET_OPENAI_BASE_URL": "h:8000"}, "GRADIENTS_DATASET_OPENAI_BASE_URL='h:8000': must be a URL"),
        ({"GRADIENTS_DATASET_GENERATOR": "vllm"}, "GRADIENTS_DATASET_GENERATOR='vllm': must be one of local, openai"),
        (
            {"GRADIENTS_DATASET_TEXT_MODEL_PATH": "/no/such/model"},
            "GRADIENTS_DATASET_TEXT_MODEL_PATH='/no/such/model': not a folder",
        ),
        ({"GRADIENTS_DATASET_IMAGE_PIPELINE_PATH": "/no/sd"}, "not a diffusers pipeline folder"),
        ({"GRADIENTS_DATASET_IMAGE_MAX_SIDE": "1000"}, "must be a positive multiple of 64"),
        ({"GRADIENTS_DATASET_MAX_EMPTY_FRACTION": "1.5"}, "must be between 0 and 1"),
        ({"GRADIENTS_DATASET_DEVICE": "tpu"}, "must be auto, cpu, cuda"),
    ],
)
def test_bad_settings_are_refused_at_start(env, problem):
    with pytest.raises(ConfigError) as error:
        load_settings(DatasetPrepSettings, env)
    assert problem in str(error.value)


def test_image_list_uri_is_parsed():
    assert parse_image_list("images:a.png|a cat;b/c.png|a dog; running fast;d.png|x|y") == [
        ("a.png", "a cat"),
        ("b/c.png", "a dog; running fast"),
        ("d.png", "x|y"),
    ]
    with pytest.raises(TaskDataError, match="no '|' between path and caption"):
        parse_image_list("images:a.png")
    with pytest.raises(TaskDataError, match="must start with 'images:'"):
        parse_image_list("a.png|cat")
