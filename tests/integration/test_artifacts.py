import os

import pytest

from gradients.runtime import EventBus
from gradients.runtime.artifacts import ArtifactNotFound, LocalArtifactStore, NatsArtifactStore, sha256_bytes


@pytest.fixture(params=["nats", "local"])
async def store(request, nats_server, tmp_path):
    if request.param == "local":
        yield LocalArtifactStore(tmp_path / "artifacts")
        return
    bus = await EventBus.connect(nats_server.url, "artifacts-test")
    yield NatsArtifactStore(bus.js)
    await bus.stop(1)


async def test_round_trip_is_content_addressed(store, tmp_path):
    data = os.urandom(300_000)  # spans several object-store chunks
    key = await store.put_bytes(data)
    assert key == sha256_bytes(data)
    assert await store.put_bytes(data) == key  # idempotent
    assert await store.get_bytes(key) == data
    assert await store.size(key) == len(data)
    src = tmp_path / "f.bin"
    src.write_bytes(b"file-content")
    fkey = await store.put_file(src)
    assert (await store.get_file(fkey, tmp_path / "out.bin")).read_bytes() == b"file-content"


async def test_missing_artifact(store):
    assert not await store.exists("0" * 64)
    with pytest.raises(ArtifactNotFound):
        await store.get_bytes("0" * 64)
