"""An event whose publication failed is published once NATS is back, without waiting for the
next change of its service.

Found by the reliability suite: while a 3-node cluster elected a new leader, task_service's
publication of two evaluation jobs failed after their EVALUATING state was stored; nothing
else happened in task_service afterwards, so the jobs sat in its outbox and the tasks stayed
EVALUATING for good.
"""

from __future__ import annotations

import asyncio

import pytest

from gradients.runtime import EventBus, Store, events
from gradients.runtime.bus import wait_for
from gradients.runtime.outbox import Outbox, keep_flushing
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev


async def test_queued_event_is_published_when_nats_returns(nats_server, redis_server):
    bus = await EventBus.connect(nats_server.url, "outbox-retry")
    store = Store.from_url(redis_server.url)
    outbox = Outbox(store, bus, "retry-test")
    retry = asyncio.create_task(keep_flushing(bus, every_s=0.2))
    try:
        nats_server.stop()
        created = ev.TaskCreated(task=pb.Task(task_id="queued", state=pb.PENDING))
        async with store.redis.pipeline(transaction=True) as pipe:
            outbox.add(pipe, events.TASK_CREATED, created, "task-created:queued")
            await pipe.execute()
        with pytest.raises(Exception):  # noqa: B017  (the publication right after the transaction fails; any error)
            await asyncio.wait_for(outbox.flush(), 10)
        assert await outbox.pending() == 1
        nats_server.restart()
        assert await wait_for(lambda: _published(bus), timeout=30), "the queued event was never published"
        assert await outbox.pending() == 0
    finally:
        retry.cancel()
        await asyncio.gather(retry, return_exceptions=True)
        await bus.stop(1)
        await store.close()


async def _published(bus: EventBus) -> bool:
    try:
        info = await bus.js.stream_info(events.stream_for(events.TASK_CREATED).name)
        return info.state.messages == 1
    except Exception:
        return False
