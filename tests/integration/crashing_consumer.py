"""Run as a child process by test_bus: consume one event, store its effect, die before the ack."""

import asyncio
import os
import sys

from gradients.runtime import Consumer, EventBus, Store, events


async def main(nats_url: str, redis_url: str, durable: str) -> None:
    bus = await EventBus.connect(nats_url, "crasher", ack_wait_s=1.0)
    store = Store.from_url(redis_url)

    async def handle(event, delivery):
        await store.apply_once(durable, delivery.msg_id, lambda pipe: pipe.incr(store.key("effect", durable)))
        os._exit(9)  # killed after the effect is stored, before the ack

    await bus.start([Consumer(durable, events.TASK_CREATED, handle)])
    await asyncio.sleep(30)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
