"""Datasets customers stream to the validator (UploadDataset) and winners streamed back.

An upload is spooled to disk while its sha256 is computed, checked against the size and
digest its first chunk announced, and only then put into the content-addressed artifact
store; a refused upload leaves nothing behind. The account that uploaded a digest is recorded
(`<ns>:account-uploads:<name>`), and CreateTask accepts `upload:<sha256>` only from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from pathlib import Path

from gradients.accounts import Account, AccountStore
from gradients.runtime import DataLoss, InvalidArgument, NotFound, ResourceExhausted, ServiceContext
from gradients.runtime.artifacts import ArtifactCorrupt, ArtifactNotFound
from gradients.v1 import task_service_pb2 as ts

log = logging.getLogger(__name__)

UPLOAD_PREFIX = "upload:"
DATASET_FORMATS = ("jsonl", "json", "csv", "parquet", "hf_disk", "image_folder")
FOLDER_FORMATS = ("hf_disk", "image_folder")  # sent as a tar archive of the folder
_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def upload_format(filename: str, declared: str) -> str:
    """The format of an upload: the declared one, else from the file name's suffix."""
    if declared:
        if declared not in DATASET_FORMATS:
            raise InvalidArgument("format", f"must be one of {', '.join(DATASET_FORMATS)}")
        return declared
    suffix = Path(filename).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise InvalidArgument("format", "cannot be told from the file name; name one of " + ", ".join(DATASET_FORMATS))


class DatasetUploads:
    def __init__(self, ctx: ServiceContext, accounts: AccountStore):
        self.ctx = ctx
        self.accounts = accounts
        self.spool_dir = Path(ctx.mesh.data_dir) / "task_service" / "spool"

    def owner_key(self, account: Account) -> str:
        return self.ctx.store.key("account-uploads", account.name)

    async def receive(self, account: Account, chunks, max_bytes: int) -> ts.UploadDatasetResponse:
        first = None
        spool = self.spool_dir / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        received = 0
        handle = None
        try:
            async for chunk in chunks:
                if first is None:
                    first = chunk
                    fmt = upload_format(first.filename, first.format)
                    if not _SHA256.match(first.sha256):
                        raise InvalidArgument("sha256", "the first chunk must carry the file's lowercase hex sha256")
                    if first.size_bytes <= 0:
                        raise InvalidArgument("size_bytes", "the first chunk must carry the file's size (> 0)")
                    if first.size_bytes > max_bytes:
                        raise ResourceExhausted(
                            f"size_bytes: {first.size_bytes} bytes is over this validator's "
                            f"{max_bytes}-byte dataset limit"
                        )
                    self.spool_dir.mkdir(parents=True, exist_ok=True)
                    handle = open(spool, "wb")
                received += len(chunk.data)
                if received > first.size_bytes:
                    raise InvalidArgument("data", f"more than the announced {first.size_bytes} bytes were sent")
                digest.update(chunk.data)
                await asyncio.to_thread(handle.write, chunk.data)
            if first is None or handle is None:
                raise InvalidArgument("chunks", "the upload stream was empty")
            handle.close()
            if received != first.size_bytes:
                raise InvalidArgument("size_bytes", f"announced {first.size_bytes} bytes, received {received}")
            if digest.hexdigest() != first.sha256:
                raise InvalidArgument("sha256", "the bytes received do not match the announced sha256")
            key = await self.ctx.artifacts.put_file(spool)
            if key != first.sha256:  # the store hashes again; both must agree
                raise DataLoss("the stored dataset does not match its sha256; upload it again")
            await self.ctx.store.redis.sadd(self.owner_key(account), key)
            log.info("dataset upload of %d bytes stored as %s", received, key[:16])
            return ts.UploadDatasetResponse(uri=UPLOAD_PREFIX + key, sha256=key, size_bytes=received, format=fmt)
        finally:
            if handle is not None and not handle.closed:
                handle.close()
            spool.unlink(missing_ok=True)

    async def owned(self, account: Account, uri: str) -> bool:
        digest = uri[len(UPLOAD_PREFIX) :]
        if not _SHA256.match(digest):
            return False
        return bool(await self.ctx.store.redis.sismember(self.owner_key(account), digest))

    async def fetch_verified(self, artifact: str, sha256: str) -> Path:
        """The artifact in a temporary file whose digest was checked; the caller removes it."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.spool_dir / f"{uuid.uuid4().hex}.download"
        try:
            await self.ctx.artifacts.get_file(artifact, path)
        except ArtifactNotFound:
            raise NotFound("the winning submission is no longer in the artifact store") from None
        except ArtifactCorrupt:
            path.unlink(missing_ok=True)
            raise DataLoss("the stored winning submission does not match its sha256") from None
        if sha256 and await asyncio.to_thread(_sha256_file, path) != sha256:
            path.unlink(missing_ok=True)
            raise DataLoss("the stored winning submission does not match its sha256")
        return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
