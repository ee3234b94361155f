"""Reading a customer's dataset into plain rows.

Sources: a local JSONL / JSON / CSV / Parquet file, a Hugging Face `datasets` folder written
by `save_to_disk`, a folder of images with same-named `.txt` captions (each given as a path
or a file:// URI), or an http(s) URL of one of those file types (downloaded with urllib to
a temporary file). Format names match the proto's DatasetSpec.format. Every failure is
a `DatasetRejected` whose reason names the file, URL or line at fault.
"""

from __future__ import annotations

import csv
import http.client
import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.dataset_prep.errors import DatasetRejected

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FILE_FORMATS = ("jsonl", "json", "csv", "parquet", "hf_disk", "image_folder")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_CONTENT_TYPE_FORMATS = {
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
}


@dataclass
class RawTable:
    """Rows as read, before column mapping. `columns` is known even when rows are empty."""

    rows: list[dict[str, Any]]
    columns: list[str]
    source: str
    base_dir: Path | None = None  # relative image paths are resolved against it


@dataclass(frozen=True)
class LoadOptions:
    file_format: str | None = None  # one of FILE_FORMATS; None or "" = from suffix / content type
    hf_split: str = "train"  # which split of a saved DatasetDict
    download_timeout_s: float = 60.0
    max_download_bytes: int = 2 * 1024**3

    def __post_init__(self) -> None:
        if self.file_format == "":
            object.__setattr__(self, "file_format", None)
        if self.file_format is not None and self.file_format not in FILE_FORMATS:
            raise ValueError(f"file_format must be one of {FILE_FORMATS}, not {self.file_format!r}")


def load_table(source: str | Path, options: LoadOptions | None = None) -> RawTable:
    """Read `source` (path or http(s) URL) into a RawTable."""
    options = options or LoadOptions()
    text = str(source)
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme in ("http", "https"):
        return _load_url(text, options)
    path = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(text)
    if not path.exists():
        raise DatasetRejected(f"dataset not found: {path}")
    return _load_path(path, options.file_format or _detect_path_format(path), options)


def _detect_path_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "hf_disk"
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file()):
            return "image_folder"
        raise DatasetRejected(f"folder {path} is neither a saved Hugging Face dataset nor a folder of images")
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetRejected(
            f"cannot tell the format of {path.name} from its suffix; expected one of "
            f"{sorted(_SUFFIX_FORMATS)} (or set file_format)"
        )
    return fmt


def _load_path(path: Path, fmt: str, options: LoadOptions) -> RawTable:
    readers = {
        "jsonl": _read_jsonl,
        "json": _read_json,
        "csv": _read_csv,
        "parquet": _read_parquet,
        "image_folder": _read_image_folder,
    }
    if fmt == "hf_disk":
        return _read_hf(path, options.hf_split)
    return readers[fmt](path)


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _read_jsonl(path: Path) -> RawTable:
    rows = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                reason = f"{path.name} line {number} is not valid JSON: {err}"
                raise DatasetRejected(reason) from None
            if not isinstance(row, dict):
                raise DatasetRejected(f"{path.name} line {number} is not a JSON object")
            rows.append(row)
    return RawTable(rows, _columns_of(rows), str(path), path.parent)


def _read_json(path: Path) -> RawTable:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DatasetRejected(f"{path.name} is not valid JSON: {err}") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetRejected(f"{path.name} must hold a JSON list of objects")
    return RawTable(data, _columns_of(data), str(path), path.parent)


def _read_csv(path: Path) -> RawTable:
    csv.field_size_limit(sys.maxsize)  # long completions exceed the 128 KiB default
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
        except csv.Error as err:
            raise DatasetRejected(f"{path.name} is not valid CSV: {err}") from None
        columns = list(reader.fieldnames or [])
    return RawTable(rows, columns, str(path), path.parent)


def _read_parquet(path: Path) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DatasetRejected(f"{path.name} is not a readable Parquet file: {err}") from None
    return RawTable(table.to_pylist(), list(table.column_names), str(path), path.parent)


def _read_hf(path: Path, split: str) -> RawTable:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as err:  # datasets raises several unrelated types here
        raise DatasetRejected(f"{path} is not a readable saved dataset: {err}") from None
    if isinstance(data, DatasetDict):
        if split not in data:
            raise DatasetRejected(f"saved dataset {path} has no split '{split}'; it has: {', '.join(data)}")
        data = data[split]
    return RawTable(data.to_list(), list(data.column_names), str(path), path)


def _read_image_folder(path: Path) -> RawTable:
    """One row per image; its caption is the same-named .txt file ("" when absent)."""
    rows = []
    for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption_file = image.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.exists() else ""
        rows.append({"image": str(image), "caption": caption})
    return RawTable(rows, ["image", "caption"], str(path), path)


def _load_url(url: str, options: LoadOptions) -> RawTable:
    name = Path(urllib.parse.urlparse(url).path).name or "dataset"
    tmp = Path(tempfile.mkdtemp(prefix="gm-dataset-"))
    try:
        target = tmp / name
        content_type = _download(url, target, options)
        fmt = options.file_format or _SUFFIX_FORMATS.get(target.suffix.lower())
        fmt = fmt or _CONTENT_TYPE_FORMATS.get(content_type)
        if fmt is None:
            raise DatasetRejected(
                f"cannot tell the format of {url} (suffix '{target.suffix}', content type "
                f"'{content_type}'); set file_format"
            )
        if fmt in ("hf_disk", "image_folder"):
            raise DatasetRejected(f"a {fmt} dataset must be a local folder, not a URL ({url})")
        table = _load_path(target, fmt, options)
        # Rows now live in memory; the temporary file goes, so nothing may point into it.
        return RawTable(table.rows, table.columns, url, None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(url: str, target: Path, options: LoadOptions) -> str:
    """Stream url into target, return its content type; DatasetRejected on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "gradients-mesh-dataset-prep"})
    try:
        with urllib.request.urlopen(request, timeout=options.download_timeout_s) as response:
            content_type = response.headers.get_content_type()
            size = 0
            with target.open("wb") as out:
                while chunk := response.read(1 << 20):
                    size += len(chunk)
                    if size > options.max_download_bytes:
                        raise DatasetRejected(f"{url} is larger than the {options.max_download_bytes} byte limit")
                    out.write(chunk)
    except urllib.error.HTTPError as err:
        raise DatasetRejected(f"could not download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DatasetRejected(f"could not download {url}: {reason}") from None
    return content_type
