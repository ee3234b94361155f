"""Turning a task's dataset into a local source the loader may read, under the source policy.

Organic (customer) tasks go through `gradients.sources`: an `upload:<sha256>` is fetched from
the artifact store into the task's work dir (a tar for folder formats, unpacked safely), a
Hub id is loaded with `datasets` (offline-aware) and saved into the work dir, http(s) is
fetched only when the operator allows it and only from public addresses, and local paths are
read only under GRADIENTS_DATASET_LOCAL_ROOTS. Image paths named inside a table (and in an
`images:` list) must lie under the roots (or in the work dir) as well. Synthetic tasks come
from the operator's pools and are trusted (their local paths and URLs are used as given).

Refusals are `DatasetRejected("<field>: <reason>")` for a task, or `SourceRefused` carrying
the field for InspectDataset; neither quotes a file's content or a path outside the roots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gradients.archive import UnsafeArchive, safe_extract
from gradients.runtime import InvalidArgument, ServiceContext
from gradients.sources import (
    HttpUrl,
    HubDataset,
    LocalPath,
    SourceRefused,
    Upload,
    check_local_path,
    classify_dataset_uri,
    fetch_public_url,
    hf_cache_dir,
    hf_datasets_cache_dir,
    hf_offline,
    resolve_model,
)
from gradients.task_types import kind_of
from gradients.v1 import common_pb2 as pb
from gradients.v1 import dataset_prep_pb2 as dp
from services.dataset_prep.errors import DatasetRejected
from services.dataset_prep.loading import FILE_FORMATS, LoadOptions, RawTable, load_table
from services.dataset_prep.schema import KIND_FIELDS, ColumnMapping, RejectionLimits, TaskKind, standardise
from services.dataset_prep.settings import DatasetPrepSettings

log = logging.getLogger(__name__)

IMAGE_LIST_FORMAT = "image_list"
FOLDER_FORMATS = ("hf_disk", "image_folder")
INSPECT_TIMEOUT_S = 100.0  # under task_service's 120 s wait, so the answer is ours
_LIMITS = LoadOptions()
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class LocalSource:
    """A dataset the loader may read: `uri` is a local path, `format` one of the loader's."""

    uri: str
    format: str  # "" = the loader detects it


# ---- the pieces (blocking; run in a worker thread) ----------------------------------------------


def _sniff_format(path: Path) -> str:
    """The format of a blob without a name: a tar (a folder), Parquet, JSON or JSONL."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "jsonl"
    raise SourceRefused(
        "dataset.format", f"cannot tell the format of the data; set it to one of {', '.join(FILE_FORMATS)}"
    )


def _check_format(fmt: str) -> str:
    if fmt and fmt not in FILE_FORMATS:
        raise SourceRefused("dataset.format", f"must be one of {', '.join(FILE_FORMATS)}")
    return fmt


def _upload_source(blob: Path, fmt: str, work_dir: Path) -> LocalSource:
    """The uploaded blob as a file or (tar of a folder) an unpacked folder in the work dir."""
    sniffed = "" if fmt and fmt not in FOLDER_FORMATS else _sniff_format(blob)
    if fmt in FOLDER_FORMATS or sniffed == "tar":
        folder = work_dir / "upload"
        try:
            safe_extract(blob, folder, max_total_bytes=_LIMITS.max_download_bytes)
        except UnsafeArchive:
            raise SourceRefused(
                "dataset.uri",
                f"the uploaded {fmt or 'folder'} is not a safe tar archive of a folder "
                "(plain files and folders only, no links, no absolute or '..' names)",
            ) from None
        finally:
            blob.unlink(missing_ok=True)
        return LocalSource(str(folder), fmt)
    fmt = fmt or sniffed
    target = blob.with_name(f"upload.{fmt}")
    blob.rename(target)
    return LocalSource(str(target), fmt)


def _hub_source(source: HubDataset, fmt: str, work_dir: Path, cache: Path) -> LocalSource:
    """The Hub dataset's split loaded with `datasets` and saved into the work dir (hf_disk)."""
    import datasets

    shown = source.repo + (f"@{source.revision}" if source.revision else "")
    split = source.split or "train"
    try:
        data = datasets.load_dataset(source.repo, revision=source.revision, split=split, cache_dir=str(cache))
    except ValueError as exc:  # an unknown split, among others
        if "split" in str(exc).lower():
            raise SourceRefused("dataset.uri", f"Hub dataset {shown!r} has no split {split!r}") from None
        raise SourceRefused(
            "dataset.uri", f"Hub dataset {shown!r} could not be loaded ({type(exc).__name__})"
        ) from None
    except Exception as exc:  # datasets raises many unrelated types for a missing dataset
        where = "in the local Hugging Face cache (offline)" if hf_offline() else "on the Hugging Face Hub"
        log.info("hub dataset %s not loaded: %s", shown, type(exc).__name__)
        raise SourceRefused("dataset.uri", f"Hub dataset {shown!r} was not found {where}") from None
    folder = work_dir / "hub"
    data.save_to_disk(str(folder))
    return LocalSource(str(folder), "hf_disk")


def _http_source(url: str, fmt: str, work_dir: Path, settings: DatasetPrepSettings) -> LocalSource:
    if not settings.allow_http:
        raise SourceRefused(
            "dataset.uri",
            "http(s) datasets are not enabled by the operator (GRADIENTS_DATASET_ALLOW_HTTP); upload the file instead",
        )
    if fmt in FOLDER_FORMATS:
        raise SourceRefused("dataset.format", f"a {fmt} dataset cannot be fetched from a URL; upload it as a tar")
    from urllib.parse import urlsplit

    suffix = Path(urlsplit(url).path).suffix.lower()
    target = fetch_public_url(url, work_dir / "download.blob", _LIMITS.max_download_bytes, _LIMITS.download_timeout_s)
    fmt = fmt or _SUFFIX_FORMATS.get(suffix) or _sniff_format(target)
    if fmt == "tar":
        raise SourceRefused("dataset.format", "a folder cannot be fetched from a URL; upload it as a tar")
    final = target.with_name(f"download.{fmt}")
    target.rename(final)
    return LocalSource(str(final), fmt)


def _check_hf_disk(folder: Path) -> None:
    """A saved dataset names its Arrow files in state.json: plain names inside the folder only."""
    for state in folder.rglob("state.json"):
        try:
            files = json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])
            names = [f["filename"] for f in files]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            raise SourceRefused("dataset.uri", "holds a state.json that is not a saved dataset's") from None
        if any(not isinstance(n, str) or "/" in n or "\\" in n or n in ("", ".", "..") for n in names):
            raise SourceRefused("dataset.uri", "a saved dataset may only name data files inside its own folder")


def _image_list(uri: str, roots: Sequence[str], work_dir: Path) -> LocalSource:
    """An `images:` list as a JSONL table of checked absolute paths."""
    from services.dataset_prep.handlers import TaskDataError, parse_image_list  # handlers imports this module

    try:
        items = parse_image_list(uri)
    except TaskDataError as exc:
        raise SourceRefused("dataset.uri", exc.reason) from None
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / "images.jsonl"
    with target.open("w", encoding="utf-8") as out:
        for index, (path, caption) in enumerate(items):
            real = check_local_path(path, roots, field=f"images[{index}].path")
            out.write(json.dumps({"image": str(real), "caption": caption}, ensure_ascii=False) + "\n")
    return LocalSource(str(target), "jsonl")


def _vet_image_column(
    source: LocalSource, mapping: ColumnMapping, allowed: Sequence[str], work_dir: Path
) -> LocalSource:
    """IMAGE tables name image files: each must lie under the allowed folders. Written back as
    JSONL with absolute paths, so what the pipeline reads is what was checked."""
    table = _load(source)
    column = mapping.fields.get("image", "image")
    if column not in table.columns:
        return source  # the missing column is reported by the mapping check
    rows = []
    for index, row in enumerate(table.rows):
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            path = Path(value)
            if not path.is_absolute() and table.base_dir is not None:
                path = table.base_dir / path
            row = {**row, column: str(check_local_path(path, allowed, field=f"dataset row {index + 1} ({column})"))}
        rows.append(row)
    target = work_dir / "vetted.jsonl"
    with target.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return LocalSource(str(target), "jsonl")


def _detected_format(source: LocalSource) -> str:
    """The format the loader will read (given, or from the suffix / folder layout)."""
    if source.format:
        return source.format
    from services.dataset_prep.loading import _detect_path_format

    try:
        return _detect_path_format(Path(source.uri))
    except DatasetRejected:
        raise SourceRefused(
            "dataset.format", f"cannot tell the format of the data; set it to one of {', '.join(FILE_FORMATS)}"
        ) from None


def _load(source: LocalSource) -> RawTable:
    """The table. The loader's reasons name the file it read: that name is replaced (it may be
    the service's work dir), and any other failure (decoding...) names only the format, never
    the bytes at fault."""
    try:
        return load_table(source.uri, LoadOptions(file_format=source.format or None))
    except DatasetRejected as exc:
        raise DatasetRejected(exc.reason.replace(source.uri, "the dataset")) from None
    except Exception as exc:
        raise DatasetRejected(
            f"the data is not readable as {source.format or 'its format'} ({type(exc).__name__})"
        ) from None


def resolve_source(
    dataset: pb.DatasetSpec,
    kind: TaskKind,
    organic: bool,
    settings: DatasetPrepSettings,
    work_dir: Path,
    data_dir: Path,
    upload_blob: Path | None = None,
) -> LocalSource:
    """Blocking: `dataset` as a local source (upload_blob: the fetched upload, when it is one)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    fmt = dataset.format
    roots = settings.local_roots
    if fmt == IMAGE_LIST_FORMAT:
        if kind is not TaskKind.IMAGE:
            raise SourceRefused("dataset.format", f"{IMAGE_LIST_FORMAT} is only for IMAGE tasks")
        return _image_list(dataset.uri, roots, work_dir) if organic else LocalSource(dataset.uri, fmt)
    _check_format(fmt)
    source = classify_dataset_uri(dataset.uri)
    allowed: list[str] = [*roots, str(work_dir)]
    if isinstance(source, Upload):
        if upload_blob is None:
            raise SourceRefused(
                "dataset.uri", "no uploaded dataset has this sha256 (upload it with UploadDataset first)"
            )
        local = _upload_source(upload_blob, fmt, work_dir)
    elif isinstance(source, HubDataset):
        local = _hub_source(source, fmt, work_dir, hf_datasets_cache_dir(data_dir))
    elif not organic:
        return LocalSource(dataset.uri, fmt)  # operator pools: trusted paths and URLs
    elif isinstance(source, HttpUrl):
        local = _http_source(source.url, fmt, work_dir, settings)
    else:
        assert isinstance(source, LocalPath)
        real = check_local_path(source.path, roots)
        if real.is_dir() and (fmt == "hf_disk" or not fmt):
            _check_hf_disk(real)
        local = LocalSource(str(real), fmt)
    if kind is TaskKind.IMAGE:
        local = LocalSource(local.uri, _detected_format(local))
        if local.format != "image_folder":
            try:
                mapping = ColumnMapping.from_dict(kind, dict(dataset.column_mapping))
            except ValueError as exc:
                raise SourceRefused("dataset.column_mapping", str(exc)) from None
            local = _vet_image_column(local, mapping, allowed, work_dir)
    return local


async def fetch_upload(ctx: ServiceContext, dataset: pb.DatasetSpec, work_dir: Path) -> Path | None:
    """The uploaded blob in the work dir when the dataset is an upload, else None."""
    if dataset.format == IMAGE_LIST_FORMAT or not dataset.uri.startswith("upload:"):
        return None
    source = classify_dataset_uri(dataset.uri)
    assert isinstance(source, Upload)
    work_dir.mkdir(parents=True, exist_ok=True)
    blob = work_dir / "upload.blob"
    try:
        await ctx.artifacts.get_file(source.key, blob)
    except KeyError:
        return None
    return blob


# ---- for a task being prepared ------------------------------------------------------------------


def _resolved_base_model(ref: str, data_dir: Path) -> str:
    """The base model's local folder (a Hub id's cached snapshot), or `ref` as is when it has
    none: the generators then report what is missing."""
    try:
        return str(resolve_model(ref, hf_cache_dir(data_dir)))
    except SourceRefused:
        return ref


def _base_model_writes(task: pb.Task, settings: DatasetPrepSettings) -> bool:
    """Whether the task's base model itself generates synthetic rows (so it is worth fetching)."""
    if not (settings.synthetic and task.base_model):
        return False
    if task.type == pb.IMAGE:  # the base draws the images unless a pipeline is configured
        return not settings.image_pipeline_path
    return settings.generator == "local" and not settings.text_model_path


async def resolve_task_dataset(ctx: ServiceContext, task: pb.Task, work_dir: Path) -> pb.Task:
    """A copy of `task` whose dataset is a local source the loader may read and whose base
    model is a local folder where one can be found. DatasetRejected("<field>: <why>") when
    the policy refuses the source; the work dir is removed then."""
    settings: DatasetPrepSettings = ctx.settings
    data_dir = Path(ctx.mesh.data_dir)
    kind = kind_of(task.type)
    resolved = pb.Task()
    resolved.CopyFrom(task)
    try:
        if kind is not None and task.dataset.uri.strip():
            blob = await fetch_upload(ctx, task.dataset, work_dir)
            local = await asyncio.to_thread(
                resolve_source, task.dataset, kind, task.organic, settings, work_dir, data_dir, blob
            )
            resolved.dataset.uri, resolved.dataset.format = local.uri, local.format
        if _base_model_writes(task, settings):
            resolved.base_model = await asyncio.to_thread(_resolved_base_model, task.base_model, data_dir)
    except SourceRefused as exc:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise DatasetRejected(str(exc)) from None
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return resolved


# ---- InspectDataset -----------------------------------------------------------------------------


def _check_mapping(table: RawTable, kind: TaskKind, mapping: ColumnMapping) -> None:
    """InvalidArgument naming the mapping entry whose column the dataset lacks."""
    available = set(table.columns)
    shown = ", ".join(sorted(map(str, available))) or "none"
    spec = KIND_FIELDS[kind]
    for name in spec.all:
        column = mapping.fields.get(name)
        if column is not None and column not in available:
            raise InvalidArgument(
                f"dataset.column_mapping[{name}]", f"the dataset has no column '{column}'; its columns: {shown}"
            )
        if column is None and name in spec.required and name not in available:
            raise InvalidArgument(
                f"dataset.column_mapping[{name}]",
                f"the dataset has no '{name}' column; map one of its columns to {name} (its columns: {shown})",
            )
    for extra in mapping.extra_columns:
        column = mapping.extra_source(extra)
        if column not in available:
            raise InvalidArgument(
                f"dataset.column_mapping[{extra}]", f"the dataset has no column '{column}'; its columns: {shown}"
            )


def inspect_local(
    dataset: pb.DatasetSpec,
    kind: TaskKind,
    settings: DatasetPrepSettings,
    work_dir: Path,
    data_dir: Path,
    blob: Path | None,
) -> dp.InspectDatasetResponse:
    """Blocking: the whole check of one customer dataset (always under the organic policy)."""
    try:
        mapping = ColumnMapping.from_dict(kind, dict(dataset.column_mapping))
    except ValueError as exc:
        raise InvalidArgument("dataset.column_mapping", str(exc)) from None
    try:
        source = resolve_source(dataset, kind, True, settings, work_dir, data_dir, blob)
        fmt = _detected_format(source)
        table = _load(LocalSource(source.uri, fmt))
    except SourceRefused as exc:
        raise InvalidArgument(exc.field, exc.reason) from None
    except DatasetRejected as exc:
        raise InvalidArgument("dataset", exc.reason) from None
    if not table.rows:
        raise InvalidArgument("dataset", "has no rows")
    _check_mapping(table, kind, mapping)
    try:
        standard = standardise(table, kind, mapping, RejectionLimits(min_rows=0, max_empty_fraction=1.0))
    except DatasetRejected as exc:
        raise InvalidArgument("dataset", exc.reason) from None
    usable, total = len(standard.rows), standard.total_rows
    if usable < settings.min_rows:
        raise InvalidArgument("dataset", f"has {usable} usable rows (of {total}); at least {settings.min_rows} needed")
    if standard.empty_rows / total > settings.max_empty_fraction:
        required = ", ".join(KIND_FIELDS[kind].required)
        raise InvalidArgument(
            "dataset",
            f"{standard.empty_rows} of {total} rows are empty or lack a required field "
            f"({required}); at most {settings.max_empty_fraction:.0%} may be",
        )
    return dp.InspectDatasetResponse(rows=usable, columns=[str(c) for c in table.columns], format=fmt)


async def inspect_dataset(
    ctx: ServiceContext, task_type: int, dataset: pb.DatasetSpec, work_dir: Path, timeout_s: float = INSPECT_TIMEOUT_S
) -> dp.InspectDatasetResponse:
    kind = kind_of(task_type)
    if kind is None:
        raise InvalidArgument(
            "type", "names no task type with a dataset schema (INSTRUCT_TEXT, CHAT, DPO, GRPO, IMAGE)"
        )
    if not dataset.uri.strip():
        raise InvalidArgument("dataset.uri", "is empty")
    try:
        try:
            blob = await fetch_upload(ctx, dataset, work_dir)
        except SourceRefused as exc:
            raise InvalidArgument(exc.field, exc.reason) from None
        work = asyncio.to_thread(inspect_local, dataset, kind, ctx.settings, work_dir, Path(ctx.mesh.data_dir), blob)
        try:
            return await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            raise InvalidArgument("dataset", f"could not be read within {timeout_s:g} s") from None
    finally:
        await asyncio.to_thread(shutil.rmtree, work_dir, True)
