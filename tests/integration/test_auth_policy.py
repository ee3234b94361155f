"""Who may call the gateway: the allow-list (embedded mode) and the metagraph parsing of chain
mode. (The chain itself cannot run here; the fetch is given real bittensor MetagraphNeuron rows.)"""

from __future__ import annotations

import time

import pytest
from bittensor.metagraph import MetagraphNeuron

from gradients.runtime.auth import (
    AllowList,
    MetagraphHotkeys,
    MinerAuthenticator,
    RedisNonceStore,
    hotkey_uids,
    sign_call,
)
from gradients.runtime.errors import PermissionDenied, Unauthenticated
from services.selector.testing import dev_keypair

VALIDATOR = dev_keypair("validator")
PATH = "/gradients.v1.MinerGateway/GetMyResults"


def neuron(uid: int, hotkey: str, validator_permit: bool = False) -> MetagraphNeuron:
    zero = None
    return MetagraphNeuron(
        uid=uid,
        hotkey=hotkey,
        coldkey="5C" + "x" * 46,
        active=True,
        validator_permit=validator_permit,
        last_update=0,
        block_at_registration=0,
        rank=0.0,
        trust=0.0,
        consensus=0.0,
        incentive=0.0,
        dividends=0.0,
        pruning_score=0.0,
        emission=zero,
        alpha_stake=zero,
        tao_stake=zero,
        total_stake=zero,
        axon=None,
        identity=None,
        commitment=None,
    )


def test_hotkey_uids_maps_registered_hotkeys():
    a, b, v = (dev_keypair(n).ss58_address for n in ("a", "b", "v"))
    neurons = [neuron(0, v, validator_permit=True), neuron(1, a), neuron(2, b)]
    assert hotkey_uids(neurons) == {v: 0, a: 1, b: 2}
    assert hotkey_uids(neurons, exclude_validators=True) == {a: 1, b: 2}
    # A hotkey listed twice keeps its lowest uid, whatever the order.
    assert hotkey_uids([neuron(7, a), neuron(3, a)]) == {a: 3}


@pytest.mark.parametrize("bad", [neuron(-1, "5x"), neuron(1, "")])
def test_hotkey_uids_refuses_malformed_rows(bad):
    with pytest.raises(ValueError, match="valid hotkey/uid"):
        hotkey_uids([bad])


async def test_metagraph_policy_fails_closed_and_keeps_the_last_good_answer():
    a = dev_keypair("a").ss58_address
    answers = [[neuron(4, a)], RuntimeError("endpoint down")]

    async def fetch(network: str, netuid: int):
        assert (network, netuid) == ("test", 56)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = MetagraphHotkeys("test", 56, fetch=fetch)
    assert policy.uid_of(a) is None  # nothing loaded yet: nobody is allowed
    assert await policy.refresh() == 1
    assert policy.uid_of(a) == 4
    with pytest.raises(RuntimeError):
        await policy.refresh()
    assert policy.uid_of(a) == 4


def test_allow_list_uids_are_positions_and_duplicates_are_refused():
    a, b = dev_keypair("a").ss58_address, dev_keypair("b").ss58_address
    allow = AllowList([a, " ", b])
    assert (allow.uid_of(a), allow.uid_of(b), allow.uid_of("nobody")) == (0, 1, None)
    with pytest.raises(ValueError, match="twice"):
        AllowList([a, a])


def test_authenticator_with_a_metagraph_policy(redis_server):
    miner = dev_keypair("registered")
    policy = MetagraphHotkeys("test", 56)
    policy.uids = {miner.ss58_address: 12}
    store = RedisNonceStore.from_url(redis_server.url, "gm-test", retention=20)
    auth = MinerAuthenticator(VALIDATOR.ss58_address, store, policy)
    try:
        who = auth.verify(sign_call(miner, PATH, b"body", VALIDATOR.ss58_address), PATH, b"body")
        assert (who.hotkey, who.uid) == (miner.ss58_address, 12)
        with pytest.raises(PermissionDenied):
            auth.verify(sign_call(dev_keypair("deregistered"), PATH, b"", VALIDATOR.ss58_address), PATH, b"")
        duplicated = (*sign_call(miner, PATH, b"", VALIDATOR.ss58_address), ("x-bittensor-nonce", str(time.time_ns())))
        with pytest.raises(Unauthenticated, match="more than once"):
            auth.verify(duplicated, PATH, b"")
    finally:
        store.close()


def test_nonce_store_must_cover_the_freshness_window(redis_server):
    store = RedisNonceStore.from_url(redis_server.url, "gm-test", retention=5)
    auth = MinerAuthenticator(VALIDATOR.ss58_address, store, AllowList([dev_keypair("m").ss58_address]), max_age_s=10)
    try:
        with pytest.raises(ValueError, match="retains entries for 5s"):
            auth.verify(sign_call(dev_keypair("m"), PATH, b"", VALIDATOR.ss58_address), PATH, b"")
    finally:
        store.close()
