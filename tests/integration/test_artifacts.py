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


async def test_files_stream_through_without_being_held_in_memory(store, tmp_path):
    import tracemalloc

    size = 24 << 20
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        key = await store.put_file(src)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = await store.get_file(key, tmp_path / "copy.bin")
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.stat().st_size == size and out.read_bytes() == src.read_bytes()
    # Chunks (1 MiB at most) plus what NATS has in flight; the whole object would be 24 MiB.
    assert put_peak < size / 3 and get_peak < size / 3, (put_peak, get_peak)


async def test_a_download_that_does_not_match_its_key_leaves_no_file(store, tmp_path):
    from gradients.runtime.artifacts import ArtifactCorrupt

    key = await store.put_bytes(b"the real content")
    if isinstance(store, LocalArtifactStore):
        store._path(key).write_bytes(b"tampered on disk")
    else:  # the same bytes under another object's name: the store's own digest is intact
        await (await store._obj()).put(key, b"tampered in the bucket")
    (tmp_path / "out").mkdir()
    with pytest.raises(ArtifactCorrupt):
        await store.get_file(key, tmp_path / "out" / "got.bin")
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor its partial download
