"""Redis state: namespaced keys, exactly-once effects, small typed repositories.

Services never build raw keys themselves: they go through `Store.key(...)` and a
`ProtoRepository`, so every key carries the namespace and one kind of record lives
under one prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

import redis.asyncio as aioredis
from google.protobuf.message import Message
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

M = TypeVar("M", bound=Message)

# How long processed-event markers are kept; longer than any redelivery window.
PROCESSED_TTL_S = 14 * 24 * 3600
# Redis connections per service process. A burst of more concurrent commands waits for a free
# connection (up to POOL_WAIT_S) instead of failing: redis-py's default async pool raises
# MaxConnectionsError at once, which turned a burst of gateway calls into INTERNAL errors.
POOL_MAX_CONNECTIONS = 100
POOL_WAIT_S = 20.0


class Store:
    def __init__(self, client: aioredis.Redis, namespace: str = "gm"):
        self.redis = client
        self.namespace = namespace

    @classmethod
    def from_url(cls, url: str, namespace: str = "gm") -> Store:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_MAX_CONNECTIONS,
            timeout=POOL_WAIT_S,
            decode_responses=False,
            health_check_interval=5,
        )
        return cls(aioredis.Redis.from_pool(pool), namespace)

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.redis.aclose()

    async def apply_once(
        self,
        scope: str,
        event_id: str,
        effect: Callable[[Pipeline], Awaitable[None] | None],
        watch: tuple[str, ...] = (),
    ) -> bool:
        """Queue `effect`'s writes and the processed-marker in one MULTI/EXEC.

        Returns False (and writes nothing) when `event_id` was already applied in `scope`,
        so a redelivered event has no second effect. `watch` names extra keys the effect
        read; a concurrent change to them retries the transaction.
        """
        marker = self.key("processed", scope, event_id)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(marker, *watch)
                    if await pipe.exists(marker):
                        return False
                    pipe.multi()
                    result = effect(pipe)
                    if result is not None:
                        await result
                    pipe.set(marker, b"1", ex=PROCESSED_TTL_S)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def was_applied(self, scope: str, event_id: str) -> bool:
        return bool(await self.redis.exists(self.key("processed", scope, event_id)))


class ProtoRepository(Generic[M]):
    """Protobuf records under `<ns>:<prefix>:<id>`, with an index set of ids."""

    def __init__(self, store: Store, prefix: str, message_type: type[M]):
        self.store = store
        self.prefix = prefix
        self.message_type = message_type

    def key(self, record_id: str) -> str:
        return self.store.key(self.prefix, record_id)

    @property
    def index_key(self) -> str:
        return self.store.key(self.prefix + "-index")

    async def get(self, record_id: str) -> M | None:
        raw = await self.store.redis.get(self.key(record_id))
        return None if raw is None else self.message_type.FromString(cast(bytes, raw))

    def put(self, pipe: Pipeline | aioredis.Redis, record_id: str, record: M) -> Any:
        """Queue the write on `pipe` (or run it on the client); returns what redis returns."""
        pipe.set(self.key(record_id), record.SerializeToString())
        return pipe.sadd(self.index_key, record_id)

    async def save(self, record_id: str, record: M) -> None:
        async with self.store.redis.pipeline(transaction=True) as pipe:
            self.put(pipe, record_id, record)
            await pipe.execute()

    async def ids(self) -> list[str]:
        return sorted(cast(bytes, m).decode() for m in await self.store.redis.smembers(self.index_key))

    async def all(self) -> list[M]:
        ids = await self.ids()
        if not ids:
            return []
        raws = await self.store.redis.mget([self.key(i) for i in ids])
        return [self.message_type.FromString(cast(bytes, r)) for r in raws if r is not None]
