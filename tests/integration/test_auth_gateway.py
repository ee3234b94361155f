"""Hotkey-signed calls to the miner gateway: every kind of bad signature is refused with the
right status, and nothing else happens; replays are refused across replicas sharing Redis."""

from __future__ import annotations

import time
from pathlib import Path

import bittensor as bt
import grpc
import pytest

from gradients.runtime import ServiceHost, Store
from gradients.runtime.auth import sign_call
from gradients.v1 import miner_gateway_pb2 as gw
from gradients.v1 import miner_gateway_pb2_grpc as gw_grpc
from miner_sdk.client import GatewayRefused, MinerClient
from services.selector.gateway import MY_RESULTS
from services.selector.service import SPEC
from services.selector.testing import dev_keypair, selector_env

VALIDATOR = dev_keypair("validator")
MINER = dev_keypair("miner")
OTHER_MINER = dev_keypair("other-miner")
STRANGER = dev_keypair("stranger")  # a valid key the validator does not allow


@pytest.fixture
async def gateway(mesh_env):
    host = await ServiceHost.start(
        SPEC, env=selector_env(mesh_env, [MINER.ss58_address, OTHER_MINER.ss58_address], VALIDATOR.ss58_address)
    )
    yield host
    await host.stop(1)


def request(task_id: str = "") -> gw.GetMyResultsRequest:
    return gw.GetMyResultsRequest(task_id=task_id)


async def call(address: str, req: gw.GetMyResultsRequest, metadata=None) -> gw.GetMyResultsResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await gw_grpc.MinerGatewayStub(channel).GetMyResults(req, metadata=metadata)


async def refused(address: str, req, metadata) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(address, req, metadata)
    return info.value


async def nonce_keys(store: Store, hotkey: str) -> list[bytes]:
    return [k async for k in store.redis.scan_iter(match=store.key("auth-nonce", hotkey, "*"))]


def signed(key, req=None, **kw):
    req = req or request()
    return sign_call(key, MY_RESULTS, req.SerializeToString(), kw.pop("receiver", VALIDATOR.ss58_address), **kw)


async def test_a_signed_call_from_an_allowed_hotkey_is_served(gateway):
    reply = await call(gateway.address, request(), signed(MINER))
    assert list(reply.tasks) == []
    assert await nonce_keys(gateway.ctx.store, MINER.ss58_address)  # its nonce is now spent


@pytest.mark.parametrize(
    "case", ["unsigned", "forged", "tampered_body", "stale", "future", "wrong_receiver", "unbound"]
)
async def test_bad_signatures_are_unauthenticated_and_leave_no_trace(gateway, case):
    req = request("t1")
    if case == "unsigned":
        metadata = None
    elif case == "forged":  # signed by the stranger, claiming to be an allowed miner
        metadata = tuple((k, MINER.ss58_address if k == "x-bittensor-hotkey" else v) for k, v in signed(STRANGER, req))
    elif case == "tampered_body":
        metadata = signed(MINER, request("t2"))
    elif case == "stale":
        metadata = signed(MINER, req, nonce_ns=time.time_ns() - 60 * 10**9)
    elif case == "future":
        metadata = signed(MINER, req, nonce_ns=time.time_ns() + 60 * 10**9)
    elif case == "wrong_receiver":
        metadata = signed(MINER, req, receiver=dev_keypair("another-validator").ss58_address)
    else:  # not bound to any receiver
        metadata = sign_call(MINER, MY_RESULTS, req.SerializeToString(), None)
    error = await refused(gateway.address, req, metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert await nonce_keys(gateway.ctx.store, MINER.ss58_address) == []
    registry = gateway.ctx.components.registry
    assert await registry.miners() == []


async def test_reasons_name_the_problem(gateway):
    req = request()
    assert "signature" in (await refused(gateway.address, req, None)).details()
    stale = await refused(gateway.address, req, signed(MINER, req, nonce_ns=time.time_ns() - 60 * 10**9))
    assert "StaleRequest" in stale.details()
    wrong = await refused(gateway.address, req, signed(MINER, req, receiver=OTHER_MINER.ss58_address))
    assert "WrongReceiver" in wrong.details()


async def test_unknown_hotkey_is_permission_denied_and_nothing_is_stored(gateway):
    error = await refused(gateway.address, request(), signed(STRANGER))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert STRANGER.ss58_address in error.details()
    assert await nonce_keys(gateway.ctx.store, STRANGER.ss58_address) == []
    assert await gateway.ctx.components.registry.miners() == []


async def test_a_replayed_call_is_refused(gateway):
    metadata = signed(MINER)
    await call(gateway.address, request(), metadata)
    error = await refused(gateway.address, request(), metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "ReplayedRequest" in error.details()


async def test_a_replay_across_two_gateway_replicas_is_refused(mesh_env):
    env = selector_env(mesh_env, [MINER.ss58_address], VALIDATOR.ss58_address)
    first = await ServiceHost.start(SPEC, env=env)
    # The second replica serves the gateway on its own public port.
    second = await ServiceHost.start(SPEC, env={**env, "GRADIENTS_SELECTOR_GATEWAY_PORT": "0"})
    try:
        second_gateway = f"127.0.0.1:{second.ctx.components.gateway_port}"
        assert second_gateway != second.address
        metadata = signed(MINER)
        await call(first.address, request(), metadata)
        error = await refused(second_gateway, request(), metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "ReplayedRequest" in error.details()
        # A fresh signature is fine on either replica.
        await call(second_gateway, request(), signed(MINER))
    finally:
        await second.stop(1)
        await first.stop(1)


async def test_sdk_with_real_wallets_and_a_validator_wallet_created_in_embedded_mode(mesh_env, tmp_path: Path):
    miner_wallet = bt.Wallet(name="miner", hotkey="default", path=str(tmp_path / "miner-wallets"))
    miner_wallet.create_new_hotkey(suppress=True)
    env = selector_env(mesh_env, [miner_wallet.hotkey.ss58_address], validator_ss58=None)
    host = await ServiceHost.start(SPEC, env=env)
    try:
        validator_wallet = bt.Wallet(
            name="validator", hotkey="default", path=str(Path(env["GRADIENTS_DATA_DIR"]) / "wallets")
        )
        receiver = validator_wallet.hotkeypub.ss58_address
        assert host.ctx.components.receiver_ss58 == receiver
        async with MinerClient(host.address, miner_wallet, receiver) as client:
            assert client.hotkey == miner_wallet.hotkey.ss58_address
            assert (await client.my_results()).final_score == 0.0
        async with MinerClient(host.address, miner_wallet, VALIDATOR.ss58_address) as wrong:
            with pytest.raises(GatewayRefused) as info:
                await wrong.my_results()
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await host.stop(1)


async def test_the_offer_stream_refuses_unknown_hotkeys_without_retrying(gateway):
    async with MinerClient(gateway.address, STRANGER, VALIDATOR.ss58_address) as client:
        with pytest.raises(GatewayRefused) as info:
            async for _ in client.offers():
                pass
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert not client.connected
