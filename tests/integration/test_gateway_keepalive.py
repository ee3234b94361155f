"""A quiet offer stream survives the miner SDK's keepalive pings.

Found by the reliability suite: grpc servers by default refuse client pings more often than
every 5 minutes without data and drop the connection with GOAWAY "too_many_pings"; the SDK
pings every 20 s, so idle miners were disconnected (and missed offers) every minute or so.
Here the client pings every 0.5 s, so the default policy would drop it within seconds. (Also
checks that the caller's channel_options override the SDK's defaults: grpc keeps the first of
repeated keys, so they used to be ignored.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from miner_sdk.client import MinerClient

sys.path.insert(0, str(Path(__file__).parent))
from test_selector_offers import VALIDATOR, selector  # noqa: E402

from services.selector.testing import dev_keypair  # noqa: E402

PINGY = [
    ("grpc.keepalive_time_ms", 500),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


async def test_idle_offer_stream_is_not_dropped_for_keepalive_pings(mesh_env):
    async with selector(mesh_env, ["pinger"]) as host:
        client = MinerClient(host.address, dev_keypair("pinger"), VALIDATOR.ss58_address, channel_options=PINGY)
        drops = 0

        async def listen():
            async for _ in client.offers():
                pass

        listener = asyncio.create_task(listen())
        await client.wait_connected(10)
        for _ in range(80):  # 8 s of a quiet stream: about 16 pings
            await asyncio.sleep(0.1)
            drops += not client.connected
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await client.close()
        assert drops == 0, f"the offer stream was down in {drops} of 80 samples"
