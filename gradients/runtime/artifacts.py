"""Content-addressed artifact storage for dataset splits and miner submissions.

Keys are the sha256 of the content, so storing the same bytes twice is a no-op and a
reader can verify what it got. Backends: the NATS JetStream Object Store (the default:
no extra server) and a local directory (development).

Files (datasets, submissions of several GiB) are streamed in chunks, never held in memory whole,
and hashed in a worker thread (hashlib releases the GIL): a service's event loop keeps serving
while a large artifact moves. A download goes to a temporary file beside `dest`, which becomes
`dest` only once its hash matches the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Protocol, cast

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

BUCKET = "gradients-artifacts"
CHUNKS_PER_FETCH = 8  # of nats-py's 128 KiB object-store chunks: 1 MiB in memory per download
FETCH_TIMEOUT_S = 30.0


class ArtifactNotFound(KeyError):
    pass


class ArtifactCorrupt(ValueError):
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


async def _verified_into(dest: Path, key: str, fill: Callable[[Path], Awaitable[object]]) -> Path:
    """`fill` writes the object into a temporary file next to `dest`; it replaces `dest` only if its
    sha256 is `key` (a reader never sees a partial or corrupt file under the final name)."""
    dest = Path(dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        await fill(tmp)
        if await asyncio.to_thread(sha256_file, tmp) != key:
            raise ArtifactCorrupt(f"artifact {key} does not match its hash")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class ArtifactStore(Protocol):
    async def put_bytes(self, data: bytes) -> str: ...
    async def put_file(self, path: Path) -> str: ...
    async def get_bytes(self, key: str) -> bytes: ...
    async def get_file(self, key: str, dest: Path) -> Path: ...
    async def exists(self, key: str) -> bool: ...
    async def size(self, key: str) -> int: ...


class LocalArtifactStore:
    """Files under `root/<sha256[:2]>/<sha256>`; writes go through a temp file + rename."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ArtifactNotFound(f"not an artifact key: {key!r}")
        return self.root / key[:2] / key

    async def put_bytes(self, data: bytes) -> str:
        key = await asyncio.to_thread(sha256_bytes, data)
        path = self._path(key)
        if not path.exists():
            await asyncio.to_thread(self._store, path, lambda f: f.write(data))
        return key

    async def put_file(self, path: Path) -> str:
        key = await asyncio.to_thread(sha256_file, path)
        target = self._path(key)
        if not target.exists():

            def copy(out: IO[bytes]) -> None:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)

            await asyncio.to_thread(self._store, target, copy)
        return key

    @staticmethod
    def _store(path: Path, write: Callable[[IO[bytes]], object]) -> None:
        """Write through a temp file + rename, so a reader never sees a partial artifact."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    async def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.exists():
            raise ArtifactNotFound(key)
        data = await asyncio.to_thread(path.read_bytes)
        if await asyncio.to_thread(sha256_bytes, data) != key:
            raise ArtifactCorrupt(f"artifact {key} does not match its hash")
        return data

    async def get_file(self, key: str, dest: Path) -> Path:
        path = self._path(key)
        if not path.exists():
            raise ArtifactNotFound(key)
        return await _verified_into(dest, key, lambda tmp: asyncio.to_thread(shutil.copyfile, path, tmp))

    async def exists(self, key: str) -> bool:
        try:
            return self._path(key).exists()
        except ArtifactNotFound:
            return False

    async def size(self, key: str) -> int:
        path = self._path(key)
        if not path.exists():
            raise ArtifactNotFound(key)
        return path.stat().st_size


class NatsArtifactStore:
    """The JetStream Object Store bucket `gradients-artifacts`, objects named by sha256."""

    def __init__(self, js: JetStreamContext, bucket: str = BUCKET, replicas: int = 1):
        self.js = js
        self.bucket = bucket
        self.replicas = replicas
        self._store: ObjectStore | None = None

    async def _obj(self) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await self.js.object_store(self.bucket)
            except (BucketNotFoundError, NotFoundError):
                try:
                    self._store = await self.js.create_object_store(
                        self.bucket,
                        config=js_api.ObjectStoreConfig(storage=js_api.StorageType.FILE, replicas=self.replicas),
                    )
                except Exception:  # created concurrently by another service
                    self._store = await self.js.object_store(self.bucket)
        return self._store

    async def put_bytes(self, data: bytes) -> str:
        key = await asyncio.to_thread(sha256_bytes, data)
        if not await self.exists(key):
            await (await self._obj()).put(key, data)
        return key

    async def put_file(self, path: Path) -> str:
        key = await asyncio.to_thread(sha256_file, path)
        if not await self.exists(key):
            with open(path, "rb") as f:  # a reader: nats-py reads it chunk by chunk in an executor
                await (await self._obj()).put(key, f)
        return key

    async def get_bytes(self, key: str) -> bytes:
        try:
            result = await (await self._obj()).get(key)
        except (ObjectNotFoundError, NotFoundError):
            raise ArtifactNotFound(key) from None
        data = bytes(cast(bytes, result.data))
        if await asyncio.to_thread(sha256_bytes, data) != key:
            raise ArtifactCorrupt(f"artifact {key} does not match its hash")
        return data

    async def get_file(self, key: str, dest: Path) -> Path:
        try:
            info = await (await self._obj()).get_info(key)
        except (ObjectNotFoundError, NotFoundError):
            raise ArtifactNotFound(key) from None
        if info.deleted:
            raise ArtifactNotFound(key)

        async def fill(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                if info.size:
                    await self._read_chunks(info.nuid, info.size, out)

        return await _verified_into(dest, key, fill)

    async def _read_chunks(self, nuid: str, size: int, out: IO[bytes]) -> None:
        """The object's chunks, a few at a time, from a pull consumer of its chunk subject.

        nats-py's own `get` pushes every chunk into a subscription queue as fast as the server
        sends them (with `writeinto` too), so a slow disk would hold much of a large object in
        memory; pulling bounds that to CHUNKS_PER_FETCH chunks."""
        stream = f"OBJ_{self.bucket}"
        sub = await self.js.pull_subscribe(
            f"$O.{self.bucket}.C.{nuid}",
            stream=stream,
            config=js_api.ConsumerConfig(
                ack_policy=js_api.AckPolicy.NONE,
                deliver_policy=js_api.DeliverPolicy.ALL,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        try:
            written = 0
            while written < size:
                for msg in await sub.fetch(CHUNKS_PER_FETCH, timeout=FETCH_TIMEOUT_S):
                    await asyncio.to_thread(out.write, msg.data)
                    written += len(msg.data)
        finally:
            try:  # unsubscribing leaves the server's consumer; it would also expire (inactive_threshold)
                await self.js.delete_consumer(stream, (await sub.consumer_info()).name)
                await sub.unsubscribe()
            except Exception:
                pass

    async def exists(self, key: str) -> bool:
        try:
            info = await (await self._obj()).get_info(key)
            return not info.deleted
        except (ObjectNotFoundError, NotFoundError):
            return False

    async def size(self, key: str) -> int:
        try:
            return cast(int, (await (await self._obj()).get_info(key)).size)
        except (ObjectNotFoundError, NotFoundError):
            raise ArtifactNotFound(key) from None


def open_artifact_store(backend: str, js: JetStreamContext, data_dir: Path, replicas: int = 1) -> ArtifactStore:
    if backend == "nats":
        return NatsArtifactStore(js, replicas=replicas)
    if backend == "local":
        return LocalArtifactStore(Path(data_dir) / "artifacts")
    raise ValueError(f"unknown artifact backend {backend!r} (nats or local)")
