"""Per-hotkey rate limit at the miner gateway (real selector, NATS, Redis): a flooding miner is
refused with RESOURCE_EXHAUSTED and a reason, the others are served, and forged or replayed
calls in a victim's name do not spend its budget. Found by the hostile-miner flood
(benchmarks/reliability/hostile.py): without a limit one hotkey's flood slowed every miner's calls."""

from __future__ import annotations

import time

import grpc
import pytest

from gradients.runtime import ServiceHost
from gradients.runtime.auth import sign_call
from gradients.v1 import miner_gateway_pb2 as gw
from gradients.v1 import miner_gateway_pb2_grpc as gw_grpc
from services.selector.gateway import MY_RESULTS
from services.selector.service import SPEC
from services.selector.testing import dev_keypair, selector_env

VALIDATOR = dev_keypair("validator")
FLOODER = dev_keypair("flooder")
HONEST = dev_keypair("honest")
STRANGER = dev_keypair("stranger")
BURST = 5


@pytest.fixture
async def gateway(mesh_env):
    env = selector_env(
        mesh_env,
        [FLOODER.ss58_address, HONEST.ss58_address],
        VALIDATOR.ss58_address,
        RATE_LIMIT_PER_S="0.5",
        RATE_LIMIT_BURST=str(BURST),
    )
    host = await ServiceHost.start(SPEC, env=env)
    yield host
    await host.stop(1)


def signed(key, req: gw.GetMyResultsRequest):
    return sign_call(key, MY_RESULTS, req.SerializeToString(), VALIDATOR.ss58_address)


async def answer(address: str, key=None, metadata=None) -> tuple[grpc.StatusCode, str]:
    req = gw.GetMyResultsRequest()
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await gw_grpc.MinerGatewayStub(channel).GetMyResults(req, metadata=metadata or signed(key, req))
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""


async def call(address: str, key=None, metadata=None) -> grpc.StatusCode:
    return (await answer(address, key, metadata))[0]


async def test_a_flooding_hotkey_is_limited_and_the_others_are_served(gateway):
    replies = [await answer(gateway.address, FLOODER) for _ in range(BURST + 3)]
    assert [code for code, _ in replies[:BURST]] == [grpc.StatusCode.OK] * BURST
    assert [code for code, _ in replies[BURST:]] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    details = replies[-1][1]
    assert "rate limit" in details and FLOODER.ss58_address in details and "retry in" in details
    assert [await call(gateway.address, HONEST) for _ in range(BURST)] == [grpc.StatusCode.OK] * BURST


async def test_forged_and_replayed_calls_do_not_spend_the_victims_budget(gateway):
    req = gw.GetMyResultsRequest()
    sniffed = signed(HONEST, req)
    assert await call(gateway.address, metadata=sniffed) == grpc.StatusCode.OK
    forged = tuple((k, HONEST.ss58_address if k == "x-bittensor-hotkey" else v) for k, v in signed(STRANGER, req))
    for _ in range(3 * BURST):
        assert await call(gateway.address, metadata=sniffed) == grpc.StatusCode.UNAUTHENTICATED  # replayed
        assert await call(gateway.address, metadata=forged) == grpc.StatusCode.UNAUTHENTICATED
    assert [await call(gateway.address, HONEST) for _ in range(BURST - 1)] == [grpc.StatusCode.OK] * (BURST - 1)


async def test_the_sdk_waits_out_the_rate_limit_instead_of_failing(gateway, tmp_path):
    """An honest miner that bursts over its budget is slowed down, not refused: MinerClient signs
    the call anew and sends it again after the time the refusal names."""
    from miner_sdk.client import MinerClient

    async with MinerClient(gateway.address, HONEST, VALIDATOR.ss58_address) as miner:
        started = time.monotonic()
        replies = [await miner.my_results() for _ in range(BURST + 2)]
        waited = time.monotonic() - started
    assert len(replies) == BURST + 2
    assert waited >= 2 * 0.9 / 0.5 - 0.5  # two calls over the burst, one token every 2 s


async def test_the_sdk_gives_up_on_other_resource_exhausted_refusals():
    from miner_sdk.client import GatewayRefused

    over_cap = GatewayRefused("UploadSubmission", grpc.StatusCode.RESOURCE_EXHAUSTED, "total_bytes: over the limit")
    limited = GatewayRefused(
        "GetMyResults",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "rate limit: hotkey x is over 20 calls/s (burst 100); retry in 0.25s",
    )
    assert over_cap.retry_after_s is None and limited.retry_after_s == 0.25
