"""Chain weights (paper §3.6): W_chain = S_final · V_trust, normalised, u16 via bittensor's helpers;
weights rate limit."""

from __future__ import annotations

import math

import pytest
from bittensor.intents.weights import clip_to_max_weight, normalize
from hypothesis import given, settings
from hypothesis import strategies as st

from services.chain_bridge.logic import (
    EMPTY_WEIGHTS,
    blocks_until_can_set,
    can_set_weights,
    chain_weights,
    raw_chain_weights,
)


def test_weights_by_hand_without_trust():
    w = chain_weights({"a": 0.75, "b": 0.25, "c": 0.0}, {"a": 5, "b": 2, "c": 9})
    # c has weight 0 → dropped; uids ascending: 2 (b), 5 (a); sum 1.0 → 0.25, 0.75
    assert w.uids == (2, 5) and w.weights == pytest.approx((0.25, 0.75))
    # u16: max-upscaled: a → 65535; b → round(0.25/0.75 · 65535) = round(21845.0) = 21845
    assert w.u16_uids == (2, 5) and w.u16_values == (21845, 65535)


def test_weights_by_hand_with_trust():
    w = chain_weights({"a": 0.75, "b": 0.25}, {"a": 5, "b": 2}, trust={"a": 0.5, "b": 1.0})
    # raw: a 0.75·0.5 = 0.375, b 0.25·1 = 0.25; sum 0.625 → b 0.4, a 0.6
    assert w.weights == pytest.approx((0.4, 0.6))
    # u16: b → round(0.4/0.6 · 65535) = round(43690.0) = 43690; a → 65535
    assert w.u16_values == (43690, 65535)


def test_max_weight_limit_caps_the_largest_share():
    # raw shares 0.8, 0.1, 0.1 with limit 0.5 → bittensor clips the top to 0.5, rest 0.25 each
    w = chain_weights({"a": 0.8, "b": 0.1, "c": 0.1}, {"a": 0, "b": 1, "c": 2}, max_weight_limit=0.5)
    assert w.weights == pytest.approx((0.5, 0.25, 0.25), abs=1e-6)
    assert math.isclose(sum(w.weights), 1.0, abs_tol=1e-12)


def test_unregistered_hotkeys_are_skipped():
    raw = raw_chain_weights({"a": 0.5, "gone": 0.9}, {"a": 3})
    assert raw == {3: 0.5}


def test_all_zero_is_empty():
    assert chain_weights({"a": 0.0, "b": 0.0}, {"a": 0, "b": 1}) == EMPTY_WEIGHTS
    assert chain_weights({}, {}).is_empty
    assert chain_weights({"a": 0.7}, {"a": 0}, trust={"a": 0.0}).is_empty


@pytest.mark.parametrize(
    "scores, uids, trust, match",
    [
        ({"a": -0.1}, {"a": 0}, None, "final_scores"),
        ({"a": float("nan")}, {"a": 0}, None, "final_scores"),
        ({"a": 0.1}, {"a": 0}, {"b": 1.0}, "trust has no value"),
        ({"a": 0.1}, {"a": 0}, {"a": -1.0}, "trust"),
        ({"a": 0.1, "b": 0.2}, {"a": 4, "b": 4}, None, "uid 4"),
        ({"a": 0.1}, {"a": 70_000}, None, "hotkey_to_uid"),
    ],
)
def test_bad_inputs_raise_naming_the_field(scores, uids, trust, match):
    with pytest.raises(ValueError, match=match):
        chain_weights(scores, uids, trust)


def test_bad_max_weight_limit():
    with pytest.raises(ValueError, match="max_weight_limit"):
        chain_weights({"a": 1.0}, {"a": 0}, max_weight_limit=0.0)


_scores = st.dictionaries(
    st.sampled_from([f"hk{i}" for i in range(40)]),
    st.floats(min_value=0.0, max_value=0.75, allow_nan=False),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_scores, st.sampled_from([1.0, 0.5, 0.2, 0.1]), st.randoms(use_true_random=False))
def test_weights_sum_to_one_and_u16_equals_bittensor(scores, limit, rnd):
    uid_pool = list(range(256))
    rnd.shuffle(uid_pool)
    hotkey_to_uid = {hk: uid_pool[i] for i, hk in enumerate(sorted(scores))}
    trust = {hk: rnd.choice([0.0, 0.3, 1.0]) for hk in scores}
    w = chain_weights(scores, hotkey_to_uid, trust, max_weight_limit=limit)
    raw = raw_chain_weights(scores, hotkey_to_uid, trust)
    positive = sorted((u, v) for u, v in raw.items() if v > 0)
    if not positive:
        assert w.is_empty
        return
    assert math.isclose(sum(w.weights), 1.0, rel_tol=0, abs_tol=1e-9)  # before quantisation
    assert list(w.uids) == sorted(w.uids)
    # bittensor's helpers, called directly on the raw products
    direct = normalize([u for u, _ in positive], clip_to_max_weight([v for _, v in positive], limit))
    assert (list(w.u16_uids), list(w.u16_values)) == (direct[0], direct[1])
    assert max(w.u16_values) == 65535


def test_rate_limit():
    # chain allows when current − last ≥ limit
    assert can_set_weights(100, 200, 100)
    assert not can_set_weights(100, 199, 100) and blocks_until_can_set(100, 199, 100) == 1
    assert blocks_until_can_set(100, 150, 100) == 50
    assert can_set_weights(None, 5, 100) and can_set_weights(0, 5, 100)  # never set
    assert can_set_weights(100, 100, 0)
    with pytest.raises(ValueError, match="last_set_block"):
        can_set_weights(300, 200, 100)
    with pytest.raises(ValueError, match="rate_limit_blocks"):
        can_set_weights(1, 2, -1)
