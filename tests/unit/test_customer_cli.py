"""The customer CLI and client library without a mesh: argument parsing, offline errors, JSON
shapes, and the client's side of uploads and downloads.

Where a server is needed for the client's own checks (chunking, a corrupt or hostile download,
which a real validator never sends), a tiny in-process TaskService answers just those calls;
the journey against the real services is tests/integration/test_customer_journey.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from concurrent import futures

import grpc
import pytest
from typer.testing import CliRunner

from gradients.cli import app
from gradients.commands.task import error_line, validator_address
from gradients.customer import (
    CHUNK_BYTES,
    CustomerClient,
    CustomerError,
    apply_reward_params,
    confidence_text,
    folder_format,
    improvement_text,
    is_dataset_uri,
    parse_column_mapping,
    parse_reward,
    safe_filename,
)
from gradients.runtime.embedded import free_port
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc

KEY = "gm_unit-test-key-do-not-print-0123456789"


def run(*args: str, env: dict[str, str] | None = None):
    base = {"GRADIENTS_API_KEY": KEY, "GRADIENTS_VALIDATOR": "", "GRADIENTS_REDIS_URL": "", "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env={**base, **(env or {})})


def closed_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


# ---- pure helpers -----------------------------------------------------------------------------


def test_column_mapping_pairs():
    assert parse_column_mapping(["instruction=question", " output = answer "], "instruct") == {
        "instruction": "question",
        "output": "answer",
    }
    assert parse_column_mapping([], "instruct") == {}


@pytest.mark.parametrize("item", ["question", "=answer", "output=", "instruction:question"])
def test_column_mapping_needs_standard_equals_column(item):
    with pytest.raises(CustomerError, match="is not STANDARD=COLUMN"):
        parse_column_mapping([item], "instruct")


def test_column_mapping_checks_the_standard_names_of_the_type():
    with pytest.raises(CustomerError, match="'chosen' is not a instruct column; one of instruction, input, output"):
        parse_column_mapping(["chosen=good"], "instruct")
    with pytest.raises(CustomerError, match="maps 'output' twice"):
        parse_column_mapping(["output=a", "output=b"], "instruct")
    # GRPO's reward functions read extra columns under any name.
    assert parse_column_mapping(["prompt=q", "answer=solution"], "grpo") == {"prompt": "q", "answer": "solution"}


def test_rewards_and_their_params():
    assert parse_reward("length:0.25") == pb.RewardFunction(name="length", weight=0.25)
    assert parse_reward("numeric_match").weight == 1.0
    assert parse_reward("code:2", code="def f(): pass").code == "def f(): pass"
    for bad, why in (("length:x", "not a number"), ("length:0", "must be > 0"), (":1", "NAME")):
        with pytest.raises(CustomerError, match=why):
            parse_reward(bad)
    functions = [parse_reward("numeric_match"), parse_reward("keyword:0.5")]
    apply_reward_params(functions, ["numeric_match:column=answer", "keyword:keywords=red,blue"])
    assert dict(functions[0].params) == {"column": "answer"} and dict(functions[1].params) == {"keywords": "red,blue"}
    with pytest.raises(CustomerError, match="no --reward length"):
        apply_reward_params(functions, ["length:target=8"])
    with pytest.raises(CustomerError, match="NAME:KEY=VALUE"):
        apply_reward_params(functions, ["keyword=red"])


@pytest.mark.parametrize(
    "value, remote",
    [
        ("upload:" + "a" * 64, True),
        ("https://example.com/d.jsonl", True),
        ("org/name", True),
        ("org/name@v1.0:test", True),
        ("train.jsonl", False),
        ("./data/train.jsonl", False),
        ("/abs/train.jsonl", False),
        ("a/b/c", False),
    ],
)
def test_dataset_uris_are_told_from_local_names(value, remote):
    assert is_dataset_uri(value) is remote


def test_folder_formats(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "dataset_dict.json").write_text("{}")
    (tmp_path / "img" / "sub").mkdir(parents=True)
    (tmp_path / "img" / "sub" / "a.PNG").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert folder_format(tmp_path / "hf") == "hf_disk"
    assert folder_format(tmp_path / "img") == "image_folder"
    with pytest.raises(CustomerError, match="neither a saved Hugging Face dataset"):
        folder_format(tmp_path / "other")


def test_result_texts():
    result = ts.CustomerTaskResult(winner_hotkey="5W", has_base=True, improvement=0.1234)
    assert improvement_text(result) == "+12.3%"
    assert improvement_text(ts.CustomerTaskResult(winner_hotkey="5W")) == "n/a"  # no baseline
    one = ts.CustomerTaskResult(miners=[ts.MinerOutcome(ok=True), ts.MinerOutcome(ok=False)])
    assert confidence_text(one) == "n/a (one valid submission)"
    two = ts.CustomerTaskResult(miners=[ts.MinerOutcome(ok=True), ts.MinerOutcome(ok=True)], rank1_confidence=0.8766)
    assert confidence_text(two) == "0.877"


def test_server_file_names_become_one_harmless_component():
    assert safe_filename("task-winner.tar", "d") == "task-winner.tar"
    assert safe_filename("../../etc/passwd", "d") == "passwd"
    assert safe_filename("..", "d") == "d" and safe_filename("", "d") == "d"
    assert safe_filename("a b;c.tar", "d") == "a_b_c.tar"


def test_error_lines_hint_and_never_show_the_key():
    assert error_line("NOT_FOUND", "task x not found", True) == ["error: NOT_FOUND: task x not found"]
    missing = error_line("UNAUTHENTICATED", "an API key is required", False)
    assert missing[0] == "error: UNAUTHENTICATED: an API key is required" and "set GRADIENTS_API_KEY" in missing[1]
    refused = error_line("UNAUTHENTICATED", "the API key is not valid", True)
    assert "was refused" in refused[1]
    assert KEY not in "".join(error_line("INTERNAL", f"echoed {KEY}", True, KEY))


def test_validator_address_from_flag_mesh_state_or_default(tmp_path):
    assert validator_address(" 10.0.0.1:9 ", tmp_path) == "10.0.0.1:9"
    assert validator_address("", tmp_path) == "127.0.0.1:50051"
    (tmp_path / "mesh.json").write_text(json.dumps({"services": {"task_service": {"address": "127.0.0.1:7001"}}}))
    assert validator_address("", tmp_path) == "127.0.0.1:7001"
    (tmp_path / "mesh.json").write_text(json.dumps({"customer_address": "127.0.0.1:7002", "services": {}}))
    assert validator_address("", tmp_path) == "127.0.0.1:7002"


# ---- the CLI offline --------------------------------------------------------------------------


def test_bad_column_is_refused_before_anything_is_sent(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"q": "a", "a": "b"}\n')
    result = run(
        "task",
        "create",
        "--type",
        "instruct",
        "--base-model",
        "org/m",
        "--dataset",
        str(data),
        "--column",
        "instruction",
        "--validator",
        closed_address(),
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --column 'instruction' is not STANDARD=COLUMN (e.g. instruction=question)"
    assert result.stdout == ""


def test_unknown_type_and_missing_dataset(tmp_path):
    bad_type = run(
        "task",
        "create",
        "--type",
        "sft",
        "--base-model",
        "org/m",
        "--dataset",
        "org/d",
        "--json",
        "--validator",
        closed_address(),
    )
    assert bad_type.exit_code == 2 and "unknown task type 'sft'" in bad_type.stderr
    assert json.loads(bad_type.stdout)["error"]["details"].startswith("unknown task type")
    missing = run(
        "task",
        "create",
        "--type",
        "instruct",
        "--base-model",
        "org/m",
        "--dataset",
        str(tmp_path / "nope.jsonl"),
        "--validator",
        closed_address(),
    )
    assert missing.exit_code == 2 and "no such local file or folder, and not a dataset URI" in missing.stderr


def test_unreachable_validator_is_one_line_and_exit_2():
    result = run("task", "list", "--validator", closed_address())
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: UNAVAILABLE: ") and lines[1].startswith("hint:")
    assert KEY not in result.stdout + result.stderr


def test_json_errors_are_machine_readable():
    result = run("task", "get", "some-task", "--json", "--validator", closed_address())
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "UNAVAILABLE" and error["details"] and KEY not in result.stdout


def test_unknown_state_filter():
    result = run("task", "list", "--state", "done", "--validator", closed_address())
    assert result.exit_code == 2 and "unknown task state 'done'" in result.stderr


def test_help_never_shows_the_key():
    result = run("task", "create", "--help")
    assert result.exit_code == 0 and "GRADIENTS_API_KEY" in result.stdout and KEY not in result.stdout


# ---- accounts, against a real Redis -----------------------------------------------------------


def test_accounts_create_list_revoke(redis_server, tmp_path):
    env = {"GRADIENTS_REDIS_URL": redis_server.url}
    created = run(
        "accounts", "create", "acme", "--max-concurrent-tasks", "2", "--tasks-per-hour", "5", "--json", env=env
    )
    assert created.exit_code == 0, created.output
    data = json.loads(created.stdout)
    assert set(data) == {"name", "max_concurrent_tasks", "tasks_per_hour", "created_at", "revoked", "api_key"}
    assert data["name"] == "acme" and data["max_concurrent_tasks"] == 2 and data["api_key"].startswith("gm_")

    shown = run("accounts", "create", "beta", env=env)
    assert shown.exit_code == 0 and "shown once" in shown.stdout and "gm_" in shown.stdout

    listed = run("accounts", "list", "--json", env=env)
    accounts = json.loads(listed.stdout)["accounts"]
    assert [a["name"] for a in accounts] == ["acme", "beta"] and all("api_key" not in a for a in accounts)
    assert data["api_key"] not in listed.stdout
    table = run("accounts", "list", env=env).stdout
    assert "acme" in table and "no limit" in table and "gm_" not in table

    again = run("accounts", "create", "acme", env=env)
    assert again.exit_code == 2 and again.stderr.strip() == "error: account acme already exists"
    revoked = run("accounts", "revoke", "acme", "--json", env=env)
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked"] is True
    assert run("accounts", "revoke", "nobody", env=env).exit_code == 2


def test_accounts_without_redis_say_how_to_name_one(tmp_path):
    result = run("accounts", "list", "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "pass --redis-url or set GRADIENTS_REDIS_URL" in result.stderr
    down = run("accounts", "list", "--redis-url", f"redis://:pw@127.0.0.1:{free_port()}/0")
    assert down.exit_code == 2 and "cannot reach Redis" in down.stderr and ":pw@" not in down.stderr


# ---- the client's side of uploads and downloads -----------------------------------------------


class FakeTaskService(ts_grpc.TaskServiceServicer):
    """Records uploads; serves a given archive with a given announced sha256."""

    def __init__(self):
        self.chunks: list[ts.DatasetChunk] = []
        self.metadata: dict[str, str] = {}
        self.archive = b""
        self.announced_sha256 = ""

    def UploadDataset(self, request_iterator, context):
        self.metadata = dict(context.invocation_metadata())
        self.chunks = list(request_iterator)
        data = b"".join(c.data for c in self.chunks)
        digest = hashlib.sha256(data).hexdigest()
        return ts.UploadDatasetResponse(
            uri=f"upload:{digest}", sha256=digest, size_bytes=len(data), format=self.chunks[0].format
        )

    def DownloadResult(self, request, context):
        data = self.archive
        for i in range(0, max(len(data), 1), 1000):
            chunk = ts.ResultChunk(data=data[i : i + 1000])
            if i == 0:
                chunk.filename, chunk.kind, chunk.size_bytes = f"{request.task_id}-winner.tar", "adapter", len(data)
                chunk.sha256 = self.announced_sha256 or hashlib.sha256(data).hexdigest()
                chunk.base_model = "org/base"
            yield chunk


@pytest.fixture
def fake():
    service = FakeTaskService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ts_grpc.add_TaskServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = CustomerClient(f"127.0.0.1:{port}", KEY, timeout=10)
    yield service, client
    client.close()
    server.stop(0)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_upload_streams_megabyte_chunks_with_the_metadata_first(fake, tmp_path):
    service, client = fake
    data = tmp_path / "train.csv"
    data.write_bytes(b"instruction,output\n" + b"x,y\n" * 700_000)  # ~2.8 MiB: three chunks
    uploaded = client.upload_dataset(data)
    first = service.chunks[0]
    assert (first.filename, first.format, first.size_bytes) == ("train.csv", "csv", data.stat().st_size)
    assert first.sha256 == hashlib.sha256(data.read_bytes()).hexdigest() == uploaded.sha256
    assert len(service.chunks) == 3 and all(len(c.data) <= CHUNK_BYTES for c in service.chunks)
    assert all(not c.filename and not c.sha256 for c in service.chunks[1:])
    assert service.metadata["authorization"] == f"Bearer {KEY}"
    assert uploaded.uri == f"upload:{first.sha256}" and KEY not in repr(client)


def test_a_saved_dataset_folder_goes_as_a_deterministic_tar(fake, tmp_path):
    service, client = fake
    folder = tmp_path / "saved"
    (folder / "train").mkdir(parents=True)
    (folder / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (folder / "train" / "data-00000-of-00001.arrow").write_bytes(b"arrow bytes")
    first = client.upload_dataset(folder)
    again = client.upload_dataset(folder)
    assert first.format == "hf_disk" and service.chunks[0].filename == "saved.tar"
    assert first.sha256 == again.sha256  # the same folder, the same content address
    with tarfile.open(fileobj=io.BytesIO(b"".join(c.data for c in service.chunks))) as tar:
        assert sorted(tar.getnames()) == ["dataset_dict.json", "train", "train/data-00000-of-00001.arrow"]
    with pytest.raises(CustomerError, match="names a folder"):
        client.upload_dataset(folder / "dataset_dict.json", "hf_disk")


def test_download_writes_checks_and_extracts(fake, tmp_path):
    service, client = fake
    service.archive = tar_bytes({"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights"})
    got = client.download_result("t1", tmp_path / "out")
    assert got.archive == tmp_path / "out" / "t1-winner.tar" and got.archive.read_bytes() == service.archive
    assert got.sha256 == hashlib.sha256(service.archive).hexdigest() and got.base_model == "org/base"
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == b"weights"


def test_a_download_that_does_not_match_its_sha256_is_deleted(fake, tmp_path):
    service, client = fake
    service.archive = tar_bytes({"adapter_config.json": b"{}"})
    service.announced_sha256 = "0" * 64
    with pytest.raises(CustomerError, match="does not match the sha256"):
        client.download_result("t1", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_hostile_archive_is_refused_and_nothing_lands_outside(fake, tmp_path):
    service, client = fake
    service.archive = tar_bytes({"../escaped.txt": b"x"})
    with pytest.raises(CustomerError, match="refused"):
        client.download_result("t1", tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and list((tmp_path / "out").iterdir()) == []


def test_merge_refuses_a_folder_without_an_adapter(tmp_path):
    from gradients.customer import merge_adapter

    with pytest.raises(CustomerError, match="holds no adapter"):
        merge_adapter(tmp_path, tmp_path, tmp_path / "merged")
