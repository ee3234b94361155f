"""Verification lanes: a burst of one hotkey's calls waits in that hotkey's own lane, so it does
not hold up another miner's call in the worker-thread queue every call shares (real Redis
nonce store, made slow as under load). Found by the hostile-miner flood
(benchmarks/reliability/hostile.py): one flooding hotkey stalled honest calls for seconds."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from gradients.runtime.auth import AllowList, MinerAuthenticator, RedisNonceStore, sign_call
from services.selector.testing import dev_keypair

VALIDATOR = dev_keypair("validator")
FLOODER = dev_keypair("flooder")
HONEST = dev_keypair("honest")
PATH = "/gradients.v1.MinerGateway/GetMyResults"
DELAY_S = 0.1
WORKERS = 8
BURST = 80  # without lanes the honest call waits behind BURST * DELAY_S / WORKERS = 1 s of them


class SlowNonceStore(RedisNonceStore):
    """Redis under load: every nonce check takes DELAY_S, in the worker thread like the real one."""

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        time.sleep(DELAY_S)
        return super().check_and_store(hotkey_ss58, nonce_ns)


class CallContext:
    """What `authenticate` reads from a gRPC servicer context: the call's metadata."""

    def __init__(self, metadata):
        self.metadata = metadata

    def invocation_metadata(self):
        return self.metadata


def signed_call(key, body: bytes) -> CallContext:
    return CallContext(sign_call(key, PATH, body, VALIDATOR.ss58_address))


async def test_a_burst_of_one_hotkey_does_not_hold_up_another(redis_server):
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(WORKERS))
    store = SlowNonceStore.from_url(redis_server.url, "gm-lanes", retention=20)
    auth = MinerAuthenticator(VALIDATOR.ss58_address, store, AllowList([FLOODER.ss58_address, HONEST.ss58_address]))
    try:
        bodies = [b"flood %d" % i for i in range(BURST)]
        burst = [asyncio.create_task(auth.authenticate(signed_call(FLOODER, body), PATH, body)) for body in bodies]
        await asyncio.sleep(DELAY_S / 2)  # the burst is queued first
        started = time.monotonic()
        who = await auth.authenticate(signed_call(HONEST, b"honest"), PATH, b"honest")
        waited = time.monotonic() - started
        assert who.hotkey == HONEST.ss58_address
        assert waited < 0.4, f"the honest call waited {waited:.2f}s behind another hotkey's burst"
        # The burst itself is served, in its own lane.
        assert {m.hotkey for m in await asyncio.gather(*burst)} == {FLOODER.ss58_address}
    finally:
        store.close()


def test_lanes_are_per_allowed_hotkey_and_one_for_everyone_else(redis_server):
    store = RedisNonceStore.from_url(redis_server.url, "gm-lanes", retention=20)
    auth = MinerAuthenticator(VALIDATOR.ss58_address, store, AllowList([FLOODER.ss58_address, HONEST.ss58_address]))
    try:
        lane = lambda key: auth.lane(sign_call(key, PATH, b"", VALIDATOR.ss58_address))  # noqa: E731
        assert lane(FLOODER) is lane(FLOODER) and lane(FLOODER) is not lane(HONEST)
        # Hotkeys the validator does not allow, and unsigned calls, share one lane: they cannot grow the table.
        assert lane(dev_keypair("stranger-1")) is lane(dev_keypair("stranger-2")) is auth.lane(None)
        assert len(auth._lanes) == 3
    finally:
        store.close()
