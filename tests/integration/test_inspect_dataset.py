"""DatasetPrep.InspectDataset over gRPC on a real dataset_prep (real NATS and Redis).

Every bad source is INVALID_ARGUMENT naming the field; no answer and no log line of the
service ever holds the content of a file it was pointed at (a marker string is written into
files under and outside the allowed roots), nor a path outside the roots. Good sources
(a JSONL under a root, an uploaded file or folder, an image list, a Hub dataset in a local
`datasets` cache with HF_HUB_OFFLINE=1) answer their usable rows and columns.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import grpc
import pytest
from PIL import Image

from gradients.runtime import ServiceHost
from gradients.v1 import common_pb2 as pb
from gradients.v1 import dataset_prep_pb2 as dp
from gradients.v1 import dataset_prep_pb2_grpc as dp_grpc
from miner_sdk.archive import pack
from services.dataset_prep.errors import DatasetRejected
from services.dataset_prep.service import SPEC as DATASET_PREP
from services.dataset_prep.sources import resolve_task_dataset

MARKER = "TOPSECRET-7f3a9c"
RPC_TIMEOUT_S = 30


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture
def records():
    handler = Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "customers"
    (root / "acme").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    rows = [{"question": f"q{i} {MARKER}", "answer": f"a{i} {MARKER}"} for i in range(12)]
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    good = root / "acme" / "qa.jsonl"
    good.write_text(jsonl)
    secret = outside / "secret.jsonl"
    secret.write_text(jsonl)
    broken = root / "acme" / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n" + '{"question": "' + MARKER + '", "answer": \n')
    binary = root / "acme" / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe" + MARKER.encode() + b"\n")
    few = root / "acme" / "few.jsonl"
    few.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (root / "acme" / "link.jsonl").symlink_to(secret)
    return {
        "root": root,
        "good": good,
        "secret": secret,
        "outside": outside,
        "broken": broken,
        "binary": binary,
        "few": few,
        "link": root / "acme" / "link.jsonl",
    }


@contextlib.asynccontextmanager
async def inspector(mesh_env: dict[str, str], roots: str, **env: str):
    host = await ServiceHost.start(
        DATASET_PREP,
        env={**mesh_env, "GRADIENTS_DATASET_LOCAL_ROOTS": roots, "GRADIENTS_DATASET_SYNTHETIC": "false", **env},
    )
    channel = grpc.aio.insecure_channel(host.address)
    try:
        yield host, dp_grpc.DatasetPrepStub(channel)
    finally:
        await channel.close()
        await host.stop(1)


async def inspect(stub, dataset: pb.DatasetSpec, type_=pb.INSTRUCT_TEXT) -> dp.InspectDatasetResponse:
    return await stub.InspectDataset(dp.InspectDatasetRequest(type=type_, dataset=dataset), timeout=RPC_TIMEOUT_S)


async def refusal(stub, dataset: pb.DatasetSpec, type_=pb.INSTRUCT_TEXT) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await inspect(stub, dataset, type_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    return error.value.details()


QA = {"instruction": "question", "output": "answer"}


async def test_bad_sources_are_refused_naming_the_field_without_their_content(mesh_env, files, records, tmp_path):
    root = str(files["root"])
    cases = {
        "outside": (
            dict(uri=str(files["secret"]), column_mapping=QA),
            "dataset.uri: is outside the allowed dataset roots",
        ),
        "passwd": (dict(uri="/etc/passwd"), "dataset.uri: is outside the allowed dataset roots"),
        "file uri": (dict(uri="file:///etc/shadow"), "dataset.uri: is outside the allowed dataset roots"),
        "slash": (dict(uri="/", format="image_folder"), "dataset.uri: is outside the allowed dataset roots"),
        "dot dot": (
            dict(uri=f"{root}/acme/../../private/secret.jsonl", column_mapping=QA),
            "dataset.uri: is outside the allowed dataset roots",
        ),
        "relative": (dict(uri="../private/secret.jsonl"), "dataset.uri: is outside the allowed dataset roots"),
        "symlink out": (
            dict(uri=str(files["link"]), column_mapping=QA),
            "dataset.uri: is outside the allowed dataset roots",
        ),
        "a root": (dict(uri=root, format="image_folder"), "dataset.uri: names an allowed dataset root itself"),
        "missing": (
            dict(uri=f"{root}/acme/none.jsonl"),
            "dataset.uri: no such file or folder under the allowed dataset roots",
        ),
        "broken json": (
            dict(uri=str(files["broken"]), column_mapping=QA),
            "dataset: broken.jsonl line 2 is not valid JSON",
        ),
        "binary": (dict(uri=str(files["binary"]), column_mapping=QA), "dataset: the data is not readable as jsonl"),
        "unmapped": (
            dict(uri=str(files["good"])),
            "dataset.column_mapping[instruction]: the dataset has no 'instruction' column",
        ),
        "wrong mapping": (
            dict(uri=str(files["good"]), column_mapping={"instruction": "question", "output": "reply"}),
            "dataset.column_mapping[output]: the dataset has no column 'reply'; its columns: answer, question",
        ),
        "unknown field": (
            dict(uri=str(files["good"]), column_mapping={"prompt": "question"}),
            "dataset.column_mapping: column_mapping names unknown field(s) ['prompt']",
        ),
        "few rows": (
            dict(uri=str(files["few"]), column_mapping=QA),
            "dataset: has 3 usable rows (of 3); at least 10 needed",
        ),
        "format": (dict(uri=str(files["good"]), format="xlsx"), "dataset.format: must be one of"),
        "http off": (dict(uri="https://example.com/qa.jsonl"), "dataset.uri: http(s) datasets are not enabled"),
        "scheme": (dict(uri="s3://bucket/qa.jsonl"), "dataset.uri: unsupported URI scheme 's3'"),
        "no upload": (dict(uri="upload:" + "0" * 64), "dataset.uri: no uploaded dataset has this sha256"),
        "bad upload": (dict(uri="upload:../../etc/passwd"), "dataset.uri: an upload URI is 'upload:' followed by"),
        "hub offline": (
            dict(uri="acme/absent-dataset"),
            "dataset.uri: Hub dataset 'acme/absent-dataset' was not found in the local Hugging Face cache (offline)",
        ),
        "empty": (dict(uri=""), "dataset.uri: is empty"),
    }
    async with inspector(mesh_env, root) as (host, stub):
        for name, (dataset, expected) in cases.items():
            details = await refusal(stub, pb.DatasetSpec(**dataset))
            assert details.startswith(expected), (name, details)
            assert MARKER not in details and str(files["outside"]) not in details, (name, details)
        assert (
            await refusal(stub, pb.DatasetSpec(uri=str(files["good"]), column_mapping=QA), pb.TASK_TYPE_UNSPECIFIED)
        ).startswith("type: ")
        # Still serving after all that.
        assert (await inspect(stub, pb.DatasetSpec(uri=str(files["good"]), column_mapping=QA))).rows == 12
    assert records.lines, "the log handler saw nothing: the check below would prove nothing"
    leaked = [line for line in records.lines if MARKER in line or str(files["outside"]) in line]
    assert not leaked, leaked


async def test_good_local_sources(mesh_env, files, tmp_path):
    csv = files["root"] / "acme" / "dpo.csv"
    csv.write_text("q,good,bad\n" + "".join(f"question {i},yes {i},no {i}\n" for i in range(15)) + ",,\n")
    async with inspector(mesh_env, f"{tmp_path / 'elsewhere'},{files['root']}") as (_, stub):
        answer = await inspect(stub, pb.DatasetSpec(uri=str(files["good"]), column_mapping=QA))
        assert (answer.rows, list(answer.columns), answer.format) == (12, ["question", "answer"], "jsonl")
        answer = await inspect(
            stub,
            pb.DatasetSpec(uri=f"file://{csv}", column_mapping={"prompt": "q", "chosen": "good", "rejected": "bad"}),
            pb.DPO,
        )
        assert (answer.rows, list(answer.columns), answer.format) == (15, ["q", "good", "bad"], "csv")


async def test_http_when_allowed_still_refuses_non_public_addresses(mesh_env, files):
    async with inspector(mesh_env, "", GRADIENTS_DATASET_ALLOW_HTTP="true") as (_, stub):
        for url in (
            "http://127.0.0.1:9/qa.jsonl",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/qa.jsonl",
            "http://localhost/qa.jsonl",
            "http://10.0.0.1/qa.jsonl",
        ):
            details = await refusal(stub, pb.DatasetSpec(uri=url, column_mapping=QA))
            assert details.startswith("dataset.uri: the URL points to a loopback, private, link-local"), (url, details)


async def test_no_roots_means_no_local_paths(mesh_env, files):
    async with inspector(mesh_env, "") as (_, stub):
        details = await refusal(stub, pb.DatasetSpec(uri=str(files["good"]), column_mapping=QA))
        assert details == "dataset.uri: local paths are not allowed here (the operator allows no dataset roots)"


def _image_folder(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (20 * i, 0, 0)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a red square {i}")
    return folder


async def test_uploads_are_read_from_the_artifact_store(mesh_env, files, tmp_path):
    async with inspector(mesh_env, str(files["root"])) as (host, stub):
        key = await host.ctx.artifacts.put_bytes(files["good"].read_bytes())
        for fmt in ("jsonl", ""):  # "" = told from the bytes
            answer = await inspect(stub, pb.DatasetSpec(uri=f"upload:{key}", format=fmt, column_mapping=QA))
            assert (answer.rows, answer.format) == (12, "jsonl")

        # A folder is uploaded as a tar of it.
        folder = _image_folder(tmp_path / "pictures", 11)
        key = await host.ctx.artifacts.put_file(pack(folder, tmp_path / "pictures.tar"))
        answer = await inspect(stub, pb.DatasetSpec(uri=f"upload:{key}", format="image_folder"), pb.IMAGE)
        assert (answer.rows, list(answer.columns), answer.format) == (11, ["image", "caption"], "image_folder")

        # A tar with a link in it is refused before anything is written.
        evil = io.BytesIO()
        with tarfile.open(fileobj=evil, mode="w") as tar:
            link = tarfile.TarInfo("img0.png")
            link.type, link.linkname = tarfile.SYMTYPE, str(files["secret"])
            tar.addfile(link)
        key = await host.ctx.artifacts.put_bytes(evil.getvalue())
        details = await refusal(stub, pb.DatasetSpec(uri=f"upload:{key}", format="image_folder"), pb.IMAGE)
        assert details.startswith("dataset.uri: the uploaded image_folder is not a safe tar archive")
        assert str(files["secret"]) not in details

        # An uploaded table naming image files: they must lie under the roots.
        rows = [{"image": "/etc/passwd", "caption": "x"}] * 12
        key = await host.ctx.artifacts.put_bytes("".join(json.dumps(r) + "\n" for r in rows).encode())
        details = await refusal(stub, pb.DatasetSpec(uri=f"upload:{key}", format="jsonl"), pb.IMAGE)
        assert details == "dataset row 1 (image): is outside the allowed dataset roots"


async def test_image_lists_and_folders_under_the_roots(mesh_env, files, tmp_path):
    folder = _image_folder(files["root"] / "acme" / "images", 10)
    items = ";".join(f"{p}|caption {i}" for i, p in enumerate(sorted(folder.glob("*.png"))))
    outside = _image_folder(tmp_path / "private-images", 1) / "img0.png"
    async with inspector(mesh_env, str(files["root"])) as (_, stub):
        answer = await inspect(stub, pb.DatasetSpec(uri=f"images:{items}", format="image_list"), pb.IMAGE)
        assert (answer.rows, answer.format) == (10, "jsonl")
        answer = await inspect(stub, pb.DatasetSpec(uri=str(folder)), pb.IMAGE)
        assert (answer.rows, answer.format) == (10, "image_folder")
        details = await refusal(
            stub, pb.DatasetSpec(uri=f"images:{items};{outside}|sneaky", format="image_list"), pb.IMAGE
        )
        assert details == "images[10].path: is outside the allowed dataset roots"
        (folder / "zz.png").symlink_to(outside)
        details = await refusal(stub, pb.DatasetSpec(uri=str(folder)), pb.IMAGE)
        assert details == "dataset.uri: holds a symlink that points outside the allowed dataset roots"


def build_hub_dataset_cache(cache: Path, repo: str, rows: list[dict], work: Path) -> None:
    """What `datasets.load_dataset(repo)` leaves in its cache, made without the Hub: the
    packaged json builder prepares the Arrow files, which are then filed under the repo's
    cache name (`org___name/default/0.0.0/<hash>`), where offline loading looks."""
    from datasets.packaged_modules.json.json import Json

    name = repo.split("/")[1]
    work.mkdir(parents=True)
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    builder = Json(
        cache_dir=str(work / "build"),
        dataset_name=name,
        data_files={"train": str(work / "train.jsonl")},
        hash="0123456789abcdef",
    )
    builder.download_and_prepare()
    (built,) = glob.glob(str(work / "build" / name / "*" / "0.0.0" / "0123456789abcdef"))
    target = cache / repo.replace("/", "___") / "default" / "0.0.0" / "0123456789abcdef"
    shutil.copytree(built, target, ignore=shutil.ignore_patterns("*.lock"))
    info = json.loads((target / "dataset_info.json").read_text())
    info["config_name"] = "default"
    (target / "dataset_info.json").write_text(json.dumps(info))


async def test_a_hub_dataset_from_the_local_cache_offline(mesh_env, tmp_path, monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: nothing is downloaded
    for var in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    rows = [{"question": f"what is {i}", "answer": f"{i}"} for i in range(14)]
    cache = Path(mesh_env["GRADIENTS_DATA_DIR"]) / "hf" / "datasets"
    build_hub_dataset_cache(cache, "acme/qa", rows, tmp_path / "hub-build")
    async with inspector(mesh_env, "") as (_, stub):
        answer = await inspect(stub, pb.DatasetSpec(uri="acme/qa", column_mapping=QA))
        assert (answer.rows, list(answer.columns), answer.format) == (14, ["question", "answer"], "hf_disk")
        answer = await inspect(stub, pb.DatasetSpec(uri="acme/qa:train", column_mapping=QA))
        assert answer.rows == 14
        details = await refusal(stub, pb.DatasetSpec(uri="acme/qa:validation", column_mapping=QA))
        assert details == "dataset.uri: Hub dataset 'acme/qa' has no split 'validation'"


async def test_a_task_being_prepared_goes_through_the_same_policy(mesh_env, files, tmp_path):
    async with inspector(mesh_env, str(files["root"])) as (host, _):
        organic = pb.Task(
            task_id="t1",
            type=pb.INSTRUCT_TEXT,
            organic=True,
            base_model="/nowhere/model",
            dataset=pb.DatasetSpec(uri=str(files["secret"]), column_mapping=QA),
        )
        with pytest.raises(DatasetRejected) as refused:
            await resolve_task_dataset(host.ctx, organic, tmp_path / "work-1")
        assert refused.value.reason == "dataset.uri: is outside the allowed dataset roots"
        assert not (tmp_path / "work-1").exists()
        # The operator's own pools (synthetic tasks) are trusted: the path is used as given.
        synthetic = pb.Task()
        synthetic.CopyFrom(organic)
        synthetic.organic = False
        resolved = await resolve_task_dataset(host.ctx, synthetic, tmp_path / "work-2")
        assert resolved.dataset.uri == str(files["secret"])
        # An organic upload becomes a file in the task's work dir.
        key = await host.ctx.artifacts.put_bytes(files["good"].read_bytes())
        organic.dataset.uri, organic.dataset.format = f"upload:{key}", "jsonl"
        resolved = await resolve_task_dataset(host.ctx, organic, tmp_path / "work-3")
        assert Path(resolved.dataset.uri).read_bytes() == files["good"].read_bytes()
        assert Path(resolved.dataset.uri).parent == tmp_path / "work-3"
        assert resolved.base_model == "/nowhere/model"  # no model there: left for the generators to report
