"""Receiving one submission upload: per-chunk and whole-file sha256, size cap, spooled to disk."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from gradients.runtime import InvalidArgument, ResourceExhausted
from gradients.v1 import miner_gateway_pb2 as gw

SUBMISSION_KINDS = ("adapter", "full")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_upload_header(first: gw.UploadChunk, max_bytes: int) -> None:
    """The first chunk names the task, the archive's sha256, its size and kind."""
    if not first.task_id:
        raise InvalidArgument("task_id", "is required in the first chunk")
    if not _SHA256.match(first.sha256):
        raise InvalidArgument("sha256", "must be the archive's lowercase hex sha256 (64 characters)")
    if first.kind not in SUBMISSION_KINDS:
        raise InvalidArgument("kind", f"must be one of {', '.join(SUBMISSION_KINDS)}, got {first.kind!r}")
    if first.total_bytes <= 0:
        raise InvalidArgument("total_bytes", "must be > 0")
    if first.total_bytes > max_bytes:
        raise ResourceExhausted(f"total_bytes: {first.total_bytes} bytes is over the {max_bytes}-byte upload limit")


class UploadAssembler:
    """Writes verified chunks to `spool`; `finish()` checks the whole archive."""

    def __init__(self, first: gw.UploadChunk, spool: Path, max_bytes: int):
        self.header = first
        self.expected_bytes = first.total_bytes
        self.max_bytes = max_bytes
        self.spool = spool
        self.received = 0
        self.chunks = 0
        self._hash = hashlib.sha256()
        spool.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(spool, "wb")

    def add(self, chunk: gw.UploadChunk) -> None:
        index = self.chunks
        if index > 0:
            for name in ("task_id", "sha256", "kind"):
                value = getattr(chunk, name)
                if value and value != getattr(self.header, name):
                    raise InvalidArgument(
                        name, f"chunk {index} says {value!r}, the first chunk said {getattr(self.header, name)!r}"
                    )
        if hashlib.sha256(chunk.data).hexdigest() != chunk.chunk_sha256:
            raise InvalidArgument("chunk_sha256", f"chunk {index} does not match its sha256 (corrupted in transit)")
        self.received += len(chunk.data)
        if self.received > self.expected_bytes:
            limit = "total_bytes" if self.expected_bytes < self.max_bytes else "the upload limit"
            raise ResourceExhausted(f"data: more than {self.expected_bytes} bytes received ({limit})")
        self._hash.update(chunk.data)
        self._file.write(chunk.data)
        self.chunks += 1

    def finish(self) -> str:
        """The verified sha256 of the whole archive."""
        self._file.close()
        if self.received != self.expected_bytes:
            raise InvalidArgument("total_bytes", f"announced {self.expected_bytes} bytes, received {self.received}")
        digest = self._hash.hexdigest()
        if digest != self.header.sha256:
            raise InvalidArgument("sha256", "the archive received does not match the announced sha256")
        return digest

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.spool.unlink(missing_ok=True)
