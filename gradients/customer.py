"""A small client library for the validator's customer API (TaskService).

Every call carries the customer's API key as `authorization: Bearer <key>` metadata. The key
is kept in the client only: it is never part of an exception's text or a repr.

    with CustomerClient("127.0.0.1:50051", api_key) as client:
        uri = client.upload_dataset("train.jsonl").uri
        task = client.create_task("instruct", "org/base-model", uri)
        for update in client.watch_task(task.task_id):
            print(update.stage, update.message)
        client.download_result(task.task_id, "out/")
        merge_adapter("out/", "path/to/base", "out/merged")

`gradients task …` (gradients/commands/task.py) is this library behind a command line.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from gradients.task_types import PROTO_KINDS
from gradients.v1 import common_pb2 as pb
from gradients.v1 import task_service_pb2 as ts
from gradients.v1 import task_service_pb2_grpc as ts_grpc

CHUNK_BYTES = 1 << 20
# Text formats the validator tells from a file's suffix; folders go as a tar with a format.
FILE_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FOLDER_FORMATS = ("hf_disk", "image_folder")
DATASET_FORMATS = ("jsonl", "json", "csv", "parquet", "hf_disk", "image_folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TASK_TYPES = {kind.value: value for value, kind in PROTO_KINDS.items()}  # CLI names are the task kinds
TERMINAL_STATES = (pb.SCORED, pb.FAILED, pb.CANCELLED)
# Standard columns a customer may map their own columns onto, per task type (dataset_prep's
# schema). GRPO also takes any other name: an extra column its reward functions read.
STANDARD_COLUMNS = {
    "instruct": ("instruction", "input", "output", "system"),
    "chat": ("conversations",),
    "dpo": ("prompt", "chosen", "rejected", "system"),
    "grpo": ("prompt",),
    "image": ("image", "caption"),
}
OPEN_MAPPING_TYPES = ("grpo",)
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_DATASET = re.compile(rf"{_HUB_PART}/{_HUB_PART}(?:@[A-Za-z0-9_.\-/]+)?(?::[A-Za-z0-9_.\-]+)?")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class CustomerError(Exception):
    """A local problem (a missing file, a bad option, a corrupt download); the message is for the user."""


# ---- pure helpers -----------------------------------------------------------------------------


def task_type(name: str) -> int:
    """The TaskType of a CLI name (instruct, chat, dpo, grpo, image)."""
    try:
        return TASK_TYPES[name.strip().lower()]
    except KeyError:
        raise CustomerError(f"unknown task type {name!r}; one of {', '.join(TASK_TYPES)}") from None


def task_state(name: str) -> int:
    """The TaskState of a name, case-insensitive (scored, FAILED, looking_for_miners…)."""
    key = name.strip().upper().replace("-", "_")
    if key not in pb.TaskState.keys() or key == "TASK_STATE_UNSPECIFIED":
        names = [n.lower() for n in pb.TaskState.keys() if n != "TASK_STATE_UNSPECIFIED"]
        raise CustomerError(f"unknown task state {name!r}; one of {', '.join(names)}")
    return pb.TaskState.Value(key)


def parse_column_mapping(items: Sequence[str], type_name: str | None = None) -> dict[str, str]:
    """`standard=theirs` pairs (e.g. instruction=question) as DatasetSpec.column_mapping.

    With `type_name`, the standard name must be one of that type's columns."""
    mapping: dict[str, str] = {}
    allowed = None if type_name in OPEN_MAPPING_TYPES else STANDARD_COLUMNS.get(type_name or "")
    for item in items:
        standard, sep, theirs = item.partition("=")
        standard, theirs = standard.strip(), theirs.strip()
        if not sep or not standard or not theirs:
            raise CustomerError(f"--column {item!r} is not STANDARD=COLUMN (e.g. instruction=question)")
        if allowed is not None and standard not in allowed:
            shown = ", ".join(allowed)
            raise CustomerError(f"--column {item!r}: {standard!r} is not a {type_name} column; one of {shown}")
        if standard in mapping and mapping[standard] != theirs:
            raise CustomerError(f"--column maps {standard!r} twice ({mapping[standard]!r} and {theirs!r})")
        mapping[standard] = theirs
    return mapping


def parse_reward(spec: str, code: str = "") -> pb.RewardFunction:
    """`NAME[:WEIGHT]` (weight 1 by default) as a RewardFunction; name `code` takes `code`."""
    name, sep, weight = spec.partition(":")
    name = name.strip()
    if not name:
        raise CustomerError(f"--reward {spec!r} is not NAME[:WEIGHT]")
    try:
        value = float(weight) if sep else 1.0
    except ValueError:
        raise CustomerError(f"--reward {spec!r}: the weight {weight!r} is not a number") from None
    if not value > 0:
        raise CustomerError(f"--reward {spec!r}: the weight must be > 0")
    fn = pb.RewardFunction(name=name, weight=value)
    if name == "code":
        fn.code = code
    return fn


def apply_reward_params(functions: Sequence[pb.RewardFunction], items: Sequence[str]) -> None:
    """`NAME:KEY=VALUE` items (e.g. numeric_match:column=answer, keyword:keywords=red,blue) into
    the params of the reward function called NAME."""
    by_name = {f.name: f for f in functions}
    for item in items:
        name, sep, pair = item.partition(":")
        key, eq, value = pair.partition("=")
        name, key = name.strip(), key.strip()
        if not sep or not eq or not name or not key:
            raise CustomerError(f"--reward-param {item!r} is not NAME:KEY=VALUE (e.g. numeric_match:column=answer)")
        if name not in by_name:
            raise CustomerError(f"--reward-param {item!r}: no --reward {name} to give it to")
        by_name[name].params[key] = value


def is_dataset_uri(value: str) -> bool:
    """True for what the validator reads itself: `upload:<sha256>`, http(s) URLs, Hub ids
    `org/name[@rev][:split]`. The caller checks first whether a local file of that name exists."""
    return value.startswith(("upload:", "http://", "https://")) or bool(_HUB_DATASET.fullmatch(value))


def folder_format(path: Path) -> str:
    """hf_disk for a saved Hugging Face dataset (dataset_dict.json / state.json), image_folder
    for a folder of images; CustomerError otherwise."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "hf_disk"
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file()):
        return "image_folder"
    raise CustomerError(
        f"{path} is a folder but neither a saved Hugging Face dataset (dataset_dict.json or "
        "state.json) nor a folder of images"
    )


def file_format(path: Path, declared: str | None) -> str:
    if declared:
        if declared not in DATASET_FORMATS:
            raise CustomerError(f"--format {declared!r}: one of {', '.join(DATASET_FORMATS)}")
        return declared
    try:
        return FILE_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise CustomerError(
            f"cannot tell the format of {path.name} from its suffix; pass --format ({', '.join(DATASET_FORMATS)})"
        ) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def safe_filename(name: str, default: str) -> str:
    """A server-given file name reduced to one harmless path component."""
    base = _SAFE_NAME.sub("_", os.path.basename(name or ""))
    return base if base.strip("._") else default


def improvement_text(result: ts.CustomerTaskResult) -> str:
    return f"{result.improvement * 100:+.1f}%" if result.has_base and result.winner_hotkey else "n/a"


def confidence_text(result: ts.CustomerTaskResult) -> str:
    if result.HasField("rank1_confidence"):
        return f"{result.rank1_confidence:.3f}"
    valid = sum(1 for m in result.miners if m.ok)
    return "n/a (one valid submission)" if valid == 1 else "n/a"


# ---- the client -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadedDataset:
    uri: str
    sha256: str
    size_bytes: int
    format: str


@dataclass(frozen=True)
class DownloadedResult:
    archive: Path  # the archive as received (sha256 checked)
    out_dir: Path  # where it was extracted
    sha256: str
    size_bytes: int
    kind: str  # adapter | full
    base_model: str
    files: tuple[Path, ...]


class _Key:
    """Holds the key so that a repr or traceback of the client never shows it."""

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "<api key>" if self.value else "<no api key>"


class CustomerClient:
    def __init__(
        self,
        address: str,
        api_key: str = "",
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        upload_timeout: float | None = 3600.0,
    ):
        self.address = address
        self._key = _Key(api_key.strip())
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", 8 * CHUNK_BYTES),
                ("grpc.max_send_message_length", 8 * CHUNK_BYTES),
            ],
        )
        self.stub = ts_grpc.TaskServiceStub(self.channel)

    def __enter__(self) -> CustomerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CustomerClient({self.address!r}, {self._key!r})"

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._key.value}"),) if self._key.value else ()

    # ---- datasets -----------------------------------------------------------------------

    def upload_dataset(
        self, path: str | Path, format: str | None = None, progress: Progress | None = None
    ) -> UploadedDataset:
        """Stream a local file (or a folder, as a tar) to the validator; its `upload:<sha256>` URI."""
        path = Path(path)
        if not path.exists():
            raise CustomerError(f"no such file or folder: {path}")
        with tempfile.TemporaryDirectory(prefix="gradients-upload-") as tmp:
            if path.is_dir():
                fmt = format or folder_format(path)
                if fmt not in FOLDER_FORMATS:
                    raise CustomerError(f"{path} is a folder; its format is one of {', '.join(FOLDER_FORMATS)}")
                from gradients.archive import UnsafeArchive, pack

                try:  # deterministic tar: the same folder always has the same digest
                    blob = pack(path, Path(tmp) / f"{path.name or 'dataset'}.tar")
                except UnsafeArchive as exc:
                    raise CustomerError(f"cannot send {path}: {exc}") from None
                filename = blob.name
            else:
                fmt = file_format(path, format)
                if fmt in FOLDER_FORMATS:
                    raise CustomerError(f"--format {fmt} names a folder; {path} is a file")
                blob, filename = path, path.name
            size = blob.stat().st_size
            if size == 0:
                raise CustomerError(f"{path} is empty")
            digest = sha256_file(blob)  # before streaming: the first chunk announces it

            def chunks() -> Iterator[ts.DatasetChunk]:
                sent = 0
                with open(blob, "rb") as handle:
                    first = True
                    while True:
                        data = handle.read(CHUNK_BYTES)
                        if not data and not first:
                            return
                        chunk = ts.DatasetChunk(data=data)
                        if first:
                            chunk.filename, chunk.format = filename, fmt
                            chunk.size_bytes, chunk.sha256 = size, digest
                            first = False
                        sent += len(data)
                        yield chunk
                        if progress is not None:
                            progress(sent, size)
                        if not data:
                            return

            reply = self.stub.UploadDataset(chunks(), metadata=self.metadata, timeout=self.upload_timeout)
        return UploadedDataset(reply.uri, reply.sha256, reply.size_bytes, reply.format or fmt)

    # ---- tasks --------------------------------------------------------------------------

    def create_task(
        self,
        type: str | int,
        base_model: str,
        dataset_uri: str = "",
        format: str = "",
        column_mapping: dict[str, str] | None = None,
        hours: float = 0.0,
        params_b: float = 0.0,
        reward_functions: Iterable[pb.RewardFunction] = (),
        result_model_name: str = "",
        request_id: str = "",
        images: Iterable[tuple[str, str]] = (),
    ) -> pb.Task:
        request = ts.CreateTaskRequest(
            type=task_type(type) if isinstance(type, str) else type,
            base_model=base_model,
            base_model_params_b=params_b,
            hours=hours,
            dataset=pb.DatasetSpec(uri=dataset_uri, format=format, column_mapping=column_mapping or {}),
            reward_functions=list(reward_functions),
            result_model_name=result_model_name,
            request_id=request_id,
            images=[ts.ImageItem(path=p, caption=c) for p, c in images],
        )
        # CreateTask reads the dataset to check it: allow it the validator's inspection time.
        return self.stub.CreateTask(request, metadata=self.metadata, timeout=max(self.timeout, 180.0)).task

    def get_task(self, task_id: str) -> pb.Task:
        return self.stub.GetTask(ts.GetTaskRequest(task_id=task_id), metadata=self.metadata, timeout=self.timeout)

    def list_tasks(
        self, state: int = pb.TASK_STATE_UNSPECIFIED, type: int = pb.TASK_TYPE_UNSPECIFIED, page_size: int = 100
    ) -> list[pb.Task]:
        """Every task of the account (all pages)."""
        tasks: list[pb.Task] = []
        token = ""
        while True:
            page = self.stub.ListTasks(
                ts.ListTasksRequest(state=state, type=type, page_size=page_size, page_token=token),
                metadata=self.metadata,
                timeout=self.timeout,
            )
            tasks.extend(page.tasks)
            token = page.next_page_token
            if not token:
                return tasks

    def cancel_task(self, task_id: str, reason: str = "") -> pb.Task:
        return self.stub.CancelTask(
            ts.CancelTaskRequest(task_id=task_id, reason=reason), metadata=self.metadata, timeout=self.timeout
        )

    def watch_task(self, task_id: str, timeout: float | None = None) -> Iterator[ts.TaskUpdate]:
        """The task's current state, then each change and progress report, until it ends."""
        yield from self.stub.WatchTask(ts.WatchTaskRequest(task_id=task_id), metadata=self.metadata, timeout=timeout)

    # ---- results ------------------------------------------------------------------------

    def get_result(self, task_id: str) -> ts.CustomerTaskResult:
        return self.stub.GetTaskResult(
            ts.GetResultRequest(task_id=task_id), metadata=self.metadata, timeout=self.timeout
        )

    def download_result(
        self, task_id: str, out_dir: str | Path, progress: Progress | None = None, extract: bool = True
    ) -> DownloadedResult:
        """Write the winning submission's archive into out_dir, check its sha256, extract it there.

        A download whose bytes do not match the announced size or sha256 is deleted and refused."""
        from gradients.archive import UnsafeArchive, safe_extract

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stream = self.stub.DownloadResult(
            ts.DownloadResultRequest(task_id=task_id), metadata=self.metadata, timeout=self.upload_timeout
        )
        part = out / f".{safe_filename(task_id, 'result')}.part"
        first: ts.ResultChunk | None = None
        digest = hashlib.sha256()
        received = 0
        try:
            with open(part, "wb") as handle:
                for chunk in stream:
                    if first is None:
                        first = chunk
                    handle.write(chunk.data)
                    digest.update(chunk.data)
                    received += len(chunk.data)
                    if progress is not None:
                        progress(received, first.size_bytes)
            if first is None:
                raise CustomerError(f"the validator sent nothing for task {task_id}")
            if first.size_bytes and received != first.size_bytes:
                raise CustomerError(
                    f"the download is {received} bytes, the validator announced {first.size_bytes}; "
                    "nothing was kept, download it again"
                )
            if digest.hexdigest() != first.sha256:
                raise CustomerError(
                    "the download does not match the sha256 the validator announced; "
                    "nothing was kept, download it again"
                )
            archive = out / safe_filename(first.filename, f"{safe_filename(task_id, 'result')}-winner.tar")
            part.replace(archive)
        finally:
            part.unlink(missing_ok=True)
        files: list[Path] = []
        if extract:
            try:
                files = safe_extract(archive, out)
            except UnsafeArchive as exc:
                archive.unlink(missing_ok=True)
                raise CustomerError(f"the winning archive was refused: {exc}") from None
        return DownloadedResult(
            archive, out, first.sha256, received, first.kind or "adapter", first.base_model, tuple(files)
        )


# ---- models -----------------------------------------------------------------------------------


def resolve_base_model(ref: str) -> Path:
    """A local folder, or a Hub id already in the local Hugging Face cache (nothing is downloaded
    when HF_HUB_OFFLINE=1)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    repo, _, revision = ref.partition("@")
    try:
        return Path(
            snapshot_download(
                repo, revision=revision or None, local_files_only=os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            )
        )
    except Exception as exc:  # huggingface_hub raises several types for "not there"
        raise CustomerError(
            f"base model {ref!r} is neither a local folder nor in the Hugging Face cache "
            f"({type(exc).__name__}); pass --base-model PATH"
        ) from None


def merge_adapter(adapter_dir: str | Path, base_model_dir: str | Path, out_dir: str | Path) -> Path:
    """The base model with the LoRA adapter merged in, saved as safetensors with the base's
    tokenizer: a full model for `AutoModelForCausalLM.from_pretrained(out_dir)`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, base_model_dir, out = Path(adapter_dir), Path(base_model_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CustomerError(f"{adapter_dir} holds no adapter (adapter_config.json); a full model needs no merge")
    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model_dir).save_pretrained(out)
    return out
