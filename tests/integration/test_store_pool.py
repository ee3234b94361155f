"""A burst of concurrent Redis commands larger than a service's connection pool waits for a
free connection instead of failing (real Redis). Found by the hostile-miner flood: hundreds of
gateway calls at once raised redis' MaxConnectionsError, answered as INTERNAL errors."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gradients.runtime import Store
from gradients.runtime.bus import wait_for
from gradients.runtime.store import POOL_MAX_CONNECTIONS


async def test_a_burst_over_the_pool_size_waits_for_a_connection(redis_server):
    store = Store.from_url(redis_server.url, namespace="pool-burst")
    n = POOL_MAX_CONNECTIONS + 50
    try:
        # Each BLPOP holds its connection for 0.2 s, so all n commands are in flight at once.
        replies = await asyncio.gather(
            *(store.redis.blpop([store.key("empty", str(i))], timeout=0.2) for i in range(n))
        )
        assert replies == [None] * n
        assert await store.ping()
    finally:
        await store.close()


async def test_close_releases_every_connection(redis_server):
    probe = aioredis.Redis.from_url(redis_server.url)
    try:
        before = len(await probe.client_list())
        store = Store.from_url(redis_server.url, namespace="pool-close")
        await asyncio.gather(*(store.redis.blpop([store.key("empty", str(i))], timeout=0.1) for i in range(10)))
        assert len(await probe.client_list()) == before + 10
        await store.close()
        assert await wait_for(lambda: _clients(probe, before), timeout=5)
    finally:
        await probe.aclose()


async def _clients(probe, expected: int) -> bool:
    return len(await probe.client_list()) == expected
