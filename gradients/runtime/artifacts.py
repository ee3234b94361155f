"""Content-addressed artifact storage for dataset splits and miner submissions.

Keys are the sha256 of the content, so storing the same bytes twice is a no-op and a
reader can verify what it got. Backends: the NATS JetStream Object Store (the default:
no extra server) and a local directory (development).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Protocol

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

BUCKET = "gradients-artifacts"


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
        key = sha256_bytes(data)
        path = self._path(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return key

    async def put_file(self, path: Path) -> str:
        return await self.put_bytes(Path(path).read_bytes())

    async def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.exists():
            raise ArtifactNotFound(key)
        data = path.read_bytes()
        if sha256_bytes(data) != key:
            raise ArtifactCorrupt(f"artifact {key} does not match its hash")
        return data

    async def get_file(self, key: str, dest: Path) -> Path:
        Path(dest).write_bytes(await self.get_bytes(key))
        return Path(dest)

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
        self._store = None

    async def _obj(self):
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
        key = sha256_bytes(data)
        if not await self.exists(key):
            await (await self._obj()).put(key, data)
        return key

    async def put_file(self, path: Path) -> str:
        key = sha256_file(path)
        if not await self.exists(key):
            with open(path, "rb") as f:
                await (await self._obj()).put(key, f)
        return key

    async def get_bytes(self, key: str) -> bytes:
        try:
            result = await (await self._obj()).get(key)
        except (ObjectNotFoundError, NotFoundError):
            raise ArtifactNotFound(key) from None
        data = bytes(result.data)
        if sha256_bytes(data) != key:
            raise ArtifactCorrupt(f"artifact {key} does not match its hash")
        return data

    async def get_file(self, key: str, dest: Path) -> Path:
        buf = io.BytesIO(await self.get_bytes(key))
        Path(dest).write_bytes(buf.getvalue())
        return Path(dest)

    async def exists(self, key: str) -> bool:
        try:
            info = await (await self._obj()).get_info(key)
            return not info.deleted
        except (ObjectNotFoundError, NotFoundError):
            return False

    async def size(self, key: str) -> int:
        try:
            return (await (await self._obj()).get_info(key)).size
        except (ObjectNotFoundError, NotFoundError):
            raise ArtifactNotFound(key) from None


def open_artifact_store(backend: str, js: JetStreamContext, data_dir: Path, replicas: int = 1) -> ArtifactStore:
    if backend == "nats":
        return NatsArtifactStore(js, replicas=replicas)
    if backend == "local":
        return LocalArtifactStore(Path(data_dir) / "artifacts")
    raise ValueError(f"unknown artifact backend {backend!r} (nats or local)")
