"""The customer-facing TaskService with production settings: API keys required, datasets and
base models checked at CreateTask (dataset_prep's InspectDataset), uploads verified, quotas.

task_service and dataset_prep run in-process on a real NATS and Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path

import grpc
import pytest

from gradients.accounts import AccountStore
from gradients.runtime import ServiceHost
from gradients.runtime.store import Store
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc
from services.dataset_prep.service import SPEC as DATASET_PREP
from services.task_service.service import SPEC as TASK_SERVICE

SECRET = "TOP-SECRET-CONTENT-7f3a"  # written into files the service must never quote
RPC = 30.0


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    from gradients.models.tiny import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("llama")))


def jsonl_bytes(rows: int = 30) -> bytes:
    return b"".join(
        json.dumps({"question": f"what is {i} + {i}?", "answer": str(2 * i)}).encode() + b"\n" for i in range(rows)
    )


class Customer:
    """A stub whose every call carries this customer's key."""

    def __init__(self, channel: grpc.aio.Channel, key: str | None):
        self.stub = ts_grpc.TaskServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()

    async def upload(
        self, data: bytes, filename: str = "train.jsonl", sha256: str | None = None, size: int | None = None
    ) -> ts.UploadDatasetResponse:
        first = ts.DatasetChunk(
            filename=filename,
            size_bytes=len(data) if size is None else size,
            sha256=sha256 or hashlib.sha256(data).hexdigest(),
            data=data[:1000],
        )
        chunks = [first] + [ts.DatasetChunk(data=data[i : i + 1000]) for i in range(1000, len(data), 1000)]

        async def stream():
            for c in chunks:
                yield c

        return await self.stub.UploadDataset(stream(), metadata=self.metadata, timeout=RPC)

    async def create(self, uri: str, base_model: str, **kw) -> pb.Task:
        request = ts.CreateTaskRequest(
            type=pb.INSTRUCT_TEXT,
            base_model=base_model,
            hours=1,
            dataset=pb.DatasetSpec(uri=uri, column_mapping={"instruction": "question", "output": "answer"}),
            **kw,
        )
        return (await self.stub.CreateTask(request, metadata=self.metadata, timeout=RPC)).task


@pytest.fixture
async def mesh(mesh_env, tmp_path):
    roots = tmp_path / "allowed"
    roots.mkdir()
    env = {
        **mesh_env,
        "GRADIENTS_TASK_AUTH": "required",
        "GRADIENTS_TASK_CHECK_AT_CREATE": "true",
        "GRADIENTS_TASK_MAX_DATASET_BYTES": str(64 * 1024),
        "GRADIENTS_DATASET_LOCAL_ROOTS": str(roots),
        "GRADIENTS_ARTIFACT_BACKEND": "local",
    }
    prep = await ServiceHost.start(DATASET_PREP, env=env)
    env["GRADIENTS_DATASET_PREP_ADDR"] = prep.address
    tasks = await ServiceHost.start(TASK_SERVICE, env=env)
    channel = grpc.aio.insecure_channel(tasks.address)
    store = Store.from_url(mesh_env["GRADIENTS_REDIS_URL"])
    accounts = AccountStore(store)
    _, alice = await accounts.create("alice")
    _, bob = await accounts.create("bob")
    _, revoked = await accounts.create("carol")
    await accounts.revoke("carol")
    yield {
        "channel": channel,
        "accounts": accounts,
        "alice": alice,
        "bob": bob,
        "revoked": revoked,
        "roots": roots,
        "tasks_host": tasks,
        "store": store,
        "tmp": tmp_path,
    }
    await channel.close()
    await store.close()
    await tasks.stop(1)
    await prep.stop(1)


async def outcome_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    code, details = await outcome_of(call)
    assert code != grpc.StatusCode.OK, "the call succeeded"
    return code, details


async def every_method(customer: Customer, task_id: str) -> dict[str, tuple[grpc.StatusCode, str]]:
    s, md = customer.stub, customer.metadata

    async def first_of(stream):
        async for item in stream:
            return item

    calls = {
        "CreateTask": s.CreateTask(
            ts.CreateTaskRequest(type=pb.INSTRUCT_TEXT, base_model="x", dataset=pb.DatasetSpec(uri="y")),
            metadata=md,
            timeout=RPC,
        ),
        "GetTask": s.GetTask(ts.GetTaskRequest(task_id=task_id), metadata=md, timeout=RPC),
        "ListTasks": s.ListTasks(ts.ListTasksRequest(), metadata=md, timeout=RPC),
        "CancelTask": s.CancelTask(ts.CancelTaskRequest(task_id=task_id), metadata=md, timeout=RPC),
        "WatchTask": first_of(s.WatchTask(ts.WatchTaskRequest(task_id=task_id), metadata=md, timeout=RPC)),
        "GetTaskResult": s.GetTaskResult(ts.GetResultRequest(task_id=task_id), metadata=md, timeout=RPC),
        "DownloadResult": first_of(
            s.DownloadResult(ts.DownloadResultRequest(task_id=task_id), metadata=md, timeout=RPC)
        ),
        "UploadDataset": customer.upload(jsonl_bytes(12)),
    }
    return {name: await outcome_of(call) for name, call in calls.items()}


async def test_every_method_needs_a_valid_key(mesh, tiny_llama):
    alice = Customer(mesh["channel"], mesh["alice"])
    uploaded = await alice.upload(jsonl_bytes())
    task = await alice.create(uploaded.uri, tiny_llama)
    for key in (None, "gm_not-a-real-key", mesh["revoked"], "Basic something"):
        outcomes = await every_method(Customer(mesh["channel"], key), task.task_id)
        for method, (code, details) in outcomes.items():
            assert code == grpc.StatusCode.UNAUTHENTICATED, (key, method, code, details)
            assert mesh["alice"] not in details and (key is None or key not in details)


async def test_another_accounts_task_is_not_found(mesh, tiny_llama):
    alice = Customer(mesh["channel"], mesh["alice"])
    bob = Customer(mesh["channel"], mesh["bob"])
    task = await alice.create((await alice.upload(jsonl_bytes())).uri, tiny_llama)
    outcomes = await every_method(bob, task.task_id)
    for method in ("GetTask", "CancelTask", "WatchTask", "GetTaskResult", "DownloadResult"):
        code, details = outcomes[method]
        assert code == grpc.StatusCode.NOT_FOUND, (method, code, details)
        assert details == f"task {task.task_id} not found"
    listed = await bob.stub.ListTasks(ts.ListTasksRequest(), metadata=bob.metadata, timeout=RPC)
    assert [t.task_id for t in listed.tasks] == []
    # Alice sees it; its result is not there before it ends (the test split stays hidden).
    mine = await alice.stub.ListTasks(ts.ListTasksRequest(), metadata=alice.metadata, timeout=RPC)
    assert [t.task_id for t in mine.tasks] == [task.task_id]
    code, details = await code_of(
        alice.stub.GetTaskResult(ts.GetResultRequest(task_id=task.task_id), metadata=alice.metadata, timeout=RPC)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "once it is SCORED" in details
    # Bob cannot use Alice's upload either (content addressing must not leak datasets).
    code, details = await code_of(bob.create(task.dataset.uri, tiny_llama))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("dataset.uri")


async def test_bad_dataset_sources_are_refused_at_create_and_nothing_is_stored(mesh, tiny_llama, caplog):
    caplog.set_level(logging.DEBUG)
    alice = Customer(mesh["channel"], mesh["alice"])
    roots: Path = mesh["roots"]
    outside = mesh["tmp"] / "outside"
    outside.mkdir()
    secret_file = outside / "secret.jsonl"
    secret_file.write_text(json.dumps({"question": SECRET, "answer": SECRET}) + "\n")
    (roots / "escape.jsonl").symlink_to(secret_file)
    (roots / "escape-dir").symlink_to(outside, target_is_directory=True)
    bad = [
        "/etc/passwd",
        "/",
        "../x",
        str(secret_file),
        str(roots / "escape.jsonl"),
        str(roots / "escape-dir" / "secret.jsonl"),
        f"{roots}/../outside/secret.jsonl",
        "http://127.0.0.1:9/data.jsonl",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.jsonl",
        "http://localhost/x.jsonl",
        "file:///etc/passwd",
        "upload:" + "0" * 64,
    ]
    for uri in bad:
        code, details = await code_of(alice.create(uri, tiny_llama))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (uri, code, details)
        assert details.startswith("dataset"), (uri, details)
        assert SECRET not in details and "root:" not in details and str(outside) not in details, (uri, details)
    listed = await alice.stub.ListTasks(ts.ListTasksRequest(), metadata=alice.metadata, timeout=RPC)
    assert list(listed.tasks) == []
    assert await mesh["store"].redis.smembers(mesh["store"].key("task-index")) == set()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in logged and "root:x:0:0" not in logged
    # The same dataset inside the root is accepted.
    good = roots / "train.jsonl"
    good.write_bytes(jsonl_bytes())
    task = await alice.create(str(good), tiny_llama)
    assert task.state == pb.PENDING


async def test_bad_base_models_and_columns_are_refused_naming_the_field(mesh, tiny_llama, tmp_path):
    alice = Customer(mesh["channel"], mesh["alice"])
    uri = (await alice.upload(jsonl_bytes())).uri
    for base in ("/etc", "no-such-org/no-such-model", "../../x", str(tmp_path)):
        code, details = await code_of(alice.create(uri, base))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("base_model"), (base, details)
    request = ts.CreateTaskRequest(
        type=pb.INSTRUCT_TEXT,
        base_model=tiny_llama,
        hours=1,
        dataset=pb.DatasetSpec(uri=uri, column_mapping={"instruction": "nope", "output": "answer"}),
    )
    code, details = await code_of(alice.stub.CreateTask(request, metadata=alice.metadata, timeout=RPC))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "column" in details, details
    few = (await alice.upload(jsonl_bytes(3))).uri
    code, details = await code_of(alice.create(few, tiny_llama))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "rows" in details, details
    # A diffusion task on a text model is refused too.
    request = ts.CreateTaskRequest(type=pb.IMAGE, base_model=tiny_llama, hours=1, dataset=pb.DatasetSpec(uri=uri))
    code, details = await code_of(alice.stub.CreateTask(request, metadata=alice.metadata, timeout=RPC))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("base_model"), details


async def test_oversized_and_corrupted_uploads_are_refused_and_nothing_is_stored(mesh):
    alice = Customer(mesh["channel"], mesh["alice"])
    artifacts = Path(mesh["tasks_host"].ctx.mesh.data_dir) / "artifacts"
    big = jsonl_bytes(3000)
    assert len(big) > 64 * 1024
    code, details = await code_of(alice.upload(big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in details
    code, details = await code_of(alice.upload(big[:2000], size=2000 - 1))  # lies about its size
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    data = jsonl_bytes(20)
    code, details = await code_of(alice.upload(data, sha256=hashlib.sha256(b"other").hexdigest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("sha256")
    code, _ = await code_of(alice.upload(data, filename="train.exe"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    stored = [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []
    assert stored == []
    spool = Path(mesh["tasks_host"].ctx.mesh.data_dir) / "task_service" / "spool"
    assert not spool.exists() or list(spool.iterdir()) == []
    ok = await alice.upload(data)
    assert ok.uri == "upload:" + hashlib.sha256(data).hexdigest() and ok.size_bytes == len(data)


async def test_quotas_are_enforced_with_when_to_retry(mesh, tiny_llama):
    accounts: AccountStore = mesh["accounts"]
    _, one_at_a_time = await accounts.create("one-at-a-time", max_concurrent_tasks=1)
    _, two_an_hour = await accounts.create("two-an-hour", tasks_per_hour=2)
    c1 = Customer(mesh["channel"], one_at_a_time)
    uri = (await c1.upload(jsonl_bytes())).uri
    first = await c1.create(uri, tiny_llama)
    code, details = await code_of(c1.create(uri, tiny_llama))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry when one of them ends" in details
    await c1.stub.CancelTask(ts.CancelTaskRequest(task_id=first.task_id), metadata=c1.metadata, timeout=RPC)
    await c1.create(uri, tiny_llama)  # a slot is free again
    c2 = Customer(mesh["channel"], two_an_hour)
    uri2 = (await c2.upload(jsonl_bytes())).uri
    await c2.create(uri2, tiny_llama)
    await c2.create(uri2, tiny_llama)
    code, details = await code_of(c2.create(uri2, tiny_llama))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in" in details


async def test_twenty_concurrent_creates_with_one_request_id_make_one_task(mesh, tiny_llama):
    alice = Customer(mesh["channel"], mesh["alice"])
    uri = (await alice.upload(jsonl_bytes())).uri
    tasks = await asyncio.gather(*(alice.create(uri, tiny_llama, request_id="same-request") for _ in range(20)))
    assert len({t.task_id for t in tasks}) == 1
    listed = await alice.stub.ListTasks(ts.ListTasksRequest(), metadata=alice.metadata, timeout=RPC)
    assert len(listed.tasks) == 1
    # Another account's identical request_id is its own request.
    bob = Customer(mesh["channel"], mesh["bob"])
    other = await bob.create((await bob.upload(jsonl_bytes())).uri, tiny_llama, request_id="same-request")
    assert other.task_id != tasks[0].task_id


async def test_keys_never_reach_logs_or_traces(mesh, tiny_llama, caplog, span_exporter):
    caplog.set_level(logging.DEBUG)
    span_exporter.clear()
    alice = Customer(mesh["channel"], mesh["alice"])
    task = await alice.create((await alice.upload(jsonl_bytes())).uri, tiny_llama)
    await alice.stub.GetTask(ts.GetTaskRequest(task_id=task.task_id), metadata=alice.metadata, timeout=RPC)
    await every_method(Customer(mesh["channel"], mesh["alice"] + "x"), task.task_id)
    logged = "\n".join(r.getMessage() + " " + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert mesh["alice"] not in logged
    spans = span_exporter.get_finished_spans()
    assert spans
    for span in spans:
        text = json.dumps({k: str(v) for k, v in (span.attributes or {}).items()}) + " ".join(
            json.dumps({k: str(v) for k, v in (e.attributes or {}).items()}) for e in span.events
        )
        assert mesh["alice"] not in text, span.name
    assert os.environ.get("GRADIENTS_API_KEY", "") != mesh["alice"]
