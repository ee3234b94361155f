"""A miner's offer session stays alive however busy it is (found by the load scenario:
a miner offered tasks more often than every heartbeat saw its session expire, dropped out
of the connected miners and had its offer stream closed)."""

from __future__ import annotations

import asyncio
import contextlib

from gradients.runtime import ServiceHost
from gradients.v1 import miner_gateway_pb2 as gw
from miner_sdk.client import MinerClient
from services.selector.service import SPEC
from services.selector.testing import dev_keypair, selector_env

VALIDATOR = dev_keypair("validator")
SESSION_TTL_S = 1.5  # heartbeat every 0.5 s


async def test_a_miner_offered_tasks_faster_than_the_heartbeat_stays_connected(mesh_env):
    miner = dev_keypair("busy-miner")
    env = selector_env(mesh_env, [miner.ss58_address], VALIDATOR.ss58_address, SESSION_TTL_S=str(SESSION_TTL_S))
    host = await ServiceHost.start(SPEC, env=env)
    client = MinerClient(host.address, miner, VALIDATOR.ss58_address)
    received: list[str] = []

    async def take_offers() -> None:
        async for offer in client.offers():
            received.append(offer.offer_id)

    runner = asyncio.create_task(take_offers())
    try:
        await client.wait_connected(10)
        sel = host.ctx.components
        session = await sel.registry.session_of(miner.ss58_address)
        assert session is not None
        sent = 0
        for i in range(int(3 * SESSION_TTL_S / 0.2)):  # an offer every 0.2 s for three session lifetimes
            assert await sel.book.deliver(session, gw.Offer(offer_id=f"offer-{i}", task_id="t"), 1.0)
            sent += 1
            await asyncio.sleep(0.2)
            assert await sel.registry.session_of(miner.ss58_address) == session, f"session expired after {i + 1} offers"
        await asyncio.sleep(0.5)
        assert len(received) == sent and client.connected
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await client.close()
        await host.stop(1)
