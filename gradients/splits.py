"""The bytes the artifact store keeps for one split, and reading them back.

dataset_prep writes these bytes, eval_worker (and anyone auditing a task) reads them, so the
format lives here, apart from both.

Text splits: the canonical JSONL itself, so the artifact's sha256 equals the split hash.
Image splits: an uncompressed USTAR tar holding `rows.jsonl` then `images/<sha256>.png` in
name order, every header fixed (mtime 0, uid 0, mode 0644), so the same split always gives
the same bytes and the same content address.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from typing import Any, Protocol

ROWS_NAME = "rows.jsonl"
IMAGES_DIR = "images/"


class Split(Protocol):
    """What the writer needs of a prepared split (dataset_prep's PreparedSplit is one)."""

    images: Mapping[str, bytes]

    def to_jsonl_bytes(self) -> bytes: ...


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def split_artifact(split: Split) -> bytes:
    rows = split.to_jsonl_bytes()
    if not split.images:
        return rows
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_member(ROWS_NAME, len(rows)), io.BytesIO(rows))
        for name in sorted(split.images):
            data = split.images[name]
            tar.addfile(_member(IMAGES_DIR + name, len(data)), io.BytesIO(data))
    return buffer.getvalue()


def _is_tar(data: bytes) -> bool:
    return data[257:262] == b"ustar"


def _jsonl_rows(data: bytes) -> list[dict[str, Any]]:
    """Rows of JSONL bytes. Split on "\\n" only: str.splitlines() also splits on U+2028, U+0085
    and other separators that json.dumps(ensure_ascii=False) leaves raw inside strings (a
    generated row holding one broke evaluation with "Unterminated string")."""
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]


def read_split_artifact(data: bytes) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """(rows, images by name) from bytes written by split_artifact."""
    if not _is_tar(data):
        return _jsonl_rows(data), {}
    rows: list[dict[str, Any]] = []
    images: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            content = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == ROWS_NAME:
                rows = _jsonl_rows(content)
            elif member.name.startswith(IMAGES_DIR):
                images[member.name[len(IMAGES_DIR) :]] = content
    return rows, images
