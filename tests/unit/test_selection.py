"""Miner selection: weights, eq 2 position probabilities, the weighted draw, offer order."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.selector.logic import (
    MinerStanding,
    PoolSizeConfig,
    normalised_position_probabilities,
    position_probabilities,
    rank_miners,
    select_pool,
    selection_weight,
    weighted_draw_without_replacement,
)
from services.task_service.logic import TaskType

DRAWS = 20_000
# Tolerance on NORMALISED probabilities, absolute: |observed frequency − p_i/Σp| < 0.02.
# (A 2 % relative bound would be below one standard error for p ≈ 0.13 at 20k draws.)
ABS_TOL = 0.02


def miner(hotkey: str, uid: int = 0, today: bool = True, score: float | None = None) -> MinerStanding:
    return MinerStanding(hotkey=hotkey, uid=uid, took_part_today=today, avg_quality_score=score)


# Five miners with distinct weights; expected rank (1 = highest weight) in the comment.
FIVE = [
    miner("hk-c", 2, today=True, score=0.5),  # rank 3 (0.5)
    miner("hk-e", 4, today=True, score=-1.0),  # rank 5 (floored to 0.01)
    miner("hk-a", 0, today=False, score=0.1),  # rank 1 (2.0: not taken part today)
    miner("hk-d", 3, today=True, score=0.2),  # rank 4 (0.2)
    miner("hk-b", 1, today=True, score=1.5),  # rank 2 (1.5)
]
FIVE_RANKED = ["hk-a", "hk-b", "hk-c", "hk-d", "hk-e"]


# --- weights -------------------------------------------------------------------------


def test_weight_is_alpha_when_not_taken_part_today_whatever_the_score():
    assert selection_weight(miner("x", today=False, score=5.0)) == 2.0
    assert selection_weight(miner("x", today=False, score=-1.0)) == 2.0
    assert selection_weight(miner("x", today=False)) == 2.0


def test_weight_is_score_floored_at_gamma_when_taken_part_today():
    assert selection_weight(miner("x", score=0.7)) == 0.7
    assert selection_weight(miner("x", score=3.5)) == 3.5
    assert selection_weight(miner("x", score=0.001)) == 0.01
    assert selection_weight(miner("x", score=-1.0)) == 0.01
    assert selection_weight(miner("x", score=None)) == 0.01  # took part, no score yet


def test_weight_uses_given_alpha_and_gamma():
    assert selection_weight(miner("x", today=False), alpha=4.0) == 4.0
    assert selection_weight(miner("x", score=0.02), gamma=0.05) == 0.05
    with pytest.raises(ValueError, match="gamma"):
        selection_weight(miner("x", score=1.0), gamma=0.0)


def test_standing_validates_fields():
    with pytest.raises(ValueError, match="hotkey"):
        MinerStanding("", 0, True, 1.0)
    with pytest.raises(ValueError, match="uid"):
        MinerStanding("x", -1, True, 1.0)
    with pytest.raises(ValueError, match="avg_quality_score"):
        MinerStanding("x", 0, True, float("nan"))


# --- eq 2 ------------------------------------------------------------------------------


def test_position_probabilities_five_miners_hand_computed():
    # p_i = 3 − (i−1)·2/5: 3.0, 2.6, 2.2, 1.8, 1.4 (sum 11)
    assert position_probabilities(5) == pytest.approx([3.0, 2.6, 2.2, 1.8, 1.4])
    assert normalised_position_probabilities(5) == pytest.approx([3.0 / 11, 2.6 / 11, 2.2 / 11, 1.8 / 11, 1.4 / 11])


def test_position_probabilities_256_miners_hand_computed():
    # p_i = 3 − (i−1)/128; Σ = 256·3 − (1/128)·(255·256/2) = 768 − 255 = 513
    p = position_probabilities(256)
    assert len(p) == 256
    assert p[0] == pytest.approx(3.0)
    assert p[1] == pytest.approx(2.9921875)
    assert p[127] == pytest.approx(2.0078125)
    assert p[128] == pytest.approx(2.0)
    assert p[255] == pytest.approx(1.0078125)
    assert sum(p) == pytest.approx(513.0)
    q = normalised_position_probabilities(256)
    assert q[0] == pytest.approx(3.0 / 513)
    assert q[255] == pytest.approx(1.0078125 / 513)
    assert sum(q) == pytest.approx(1.0)


def test_position_probabilities_edge_cases():
    assert position_probabilities(0) == []
    assert position_probabilities(1) == [3.0]
    assert position_probabilities(4, lam=1.0) == [1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="lam"):
        position_probabilities(3, lam=0.5)
    with pytest.raises(ValueError, match="n must"):
        position_probabilities(-1)


# --- ranking -------------------------------------------------------------------------


def test_rank_by_weight_descending():
    assert [m.hotkey for m in rank_miners(FIVE)] == FIVE_RANKED


def test_rank_ties_broken_by_hotkey_whatever_the_input_order():
    tied = [miner(f"hk-{c}", today=False) for c in "qwertyuiop"]
    expected = sorted(m.hotkey for m in tied)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(tied)
        assert [m.hotkey for m in rank_miners(tied)] == expected


def test_rank_with_salt_rotates_ties_but_keeps_weight_order():
    tied = [miner(f"hk-{i:02d}", today=False) for i in range(10)]
    low = miner("zz-low", score=0.3)
    orders = {tuple(m.hotkey for m in rank_miners(tied + [low], tie_break_salt=f"task-{t}")) for t in range(5)}
    assert len(orders) > 1  # different tasks, different order among the tied
    assert all(order[-1] == "zz-low" for order in orders)  # weight still decides first
    once = rank_miners(tied, tie_break_salt="task-1")
    assert rank_miners(list(reversed(tied)), tie_break_salt="task-1") == once  # deterministic


def test_rank_rejects_duplicate_hotkeys():
    with pytest.raises(ValueError, match="duplicate hotkey"):
        rank_miners([miner("a"), miner("a", uid=1)])


# --- the draw ------------------------------------------------------------------------


def test_first_draw_frequencies_match_eq2_for_five_miners():
    rng = random.Random(1234)
    counts = Counter(select_pool(FIVE, 1, rng)[0].hotkey for _ in range(DRAWS))
    expected = normalised_position_probabilities(5)
    for rank, hotkey in enumerate(FIVE_RANKED):
        assert abs(counts[hotkey] / DRAWS - expected[rank]) < ABS_TOL, (hotkey, counts[hotkey] / DRAWS, expected[rank])


def test_pool_of_two_from_three_matches_sequential_draw_probabilities():
    # p = 3, 7/3, 5/3 (Σ 7). P({1,2}) = 3/7·(7/3)/4 + (1/3)·3/(14/3) = 0.25 + 0.2142857 = 0.4642857
    # P({1,3}) = 3/7·(5/3)/4 + (5/21)·3/(16/3) = 0.1785714 + 0.1339286 = 0.3125
    # P({2,3}) = (1/3)·(5/3)/(14/3) + (5/21)·(7/3)/(16/3) = 0.1190476 + 0.1041667 = 0.2232143
    three = [miner("a", today=False), miner("b", score=1.0), miner("c", score=0.5)]
    rng = random.Random(99)
    counts = Counter(tuple(m.hotkey for m in select_pool(three, 2, rng)) for _ in range(DRAWS))
    for pair, p in {("a", "b"): 0.4642857, ("a", "c"): 0.3125, ("b", "c"): 0.2232143}.items():
        assert abs(counts[pair] / DRAWS - p) < ABS_TOL, (pair, counts[pair] / DRAWS, p)
    assert set(counts) == {("a", "b"), ("a", "c"), ("b", "c")}  # offer order is always rank order


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=40),
    pool_size=st.integers(min_value=0, max_value=50),
    n_excluded=st.integers(min_value=0, max_value=10),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_pool_never_repeats_respects_exclusions_and_is_in_rank_order(n, pool_size, n_excluded, seed):
    rng = random.Random(seed)
    standings = [miner(f"hk-{i:03d}", uid=i, today=rng.random() < 0.3, score=rng.uniform(-1, 3)) for i in range(n)]
    excluded = {f"hk-{i:03d}" for i in rng.sample(range(n), min(n_excluded, n))}
    pool = select_pool(standings, pool_size, rng, exclude=excluded)
    hotkeys = [m.hotkey for m in pool]
    assert len(set(hotkeys)) == len(hotkeys)
    assert not excluded & set(hotkeys)
    assert len(pool) == min(pool_size, n - len(excluded))
    rank_of = {m.hotkey: i for i, m in enumerate(rank_miners(m for m in standings if m.hotkey not in excluded))}
    assert [rank_of[h] for h in hotkeys] == sorted(rank_of[h] for h in hotkeys)


def test_exclusion_happens_before_ranking():
    # Excluding miners must give exactly the draw over the remaining miners (|M| shrinks).
    excluded = {"hk-a", "hk-d"}
    rest = [m for m in FIVE if m.hotkey not in excluded]
    for seed in range(20):
        with_exclude = select_pool(FIVE, 2, random.Random(seed), exclude=excluded)
        filtered = select_pool(rest, 2, random.Random(seed))
        assert with_exclude == filtered


def test_offer_order_is_highest_rank_first_not_draw_order():
    weights = position_probabilities(5)
    seen_unsorted_draw = False
    for seed in range(50):
        draw_order = weighted_draw_without_replacement(weights, 3, random.Random(seed))
        pool = select_pool(FIVE, 3, random.Random(seed))
        # same random stream, same miners, but offered by rank
        assert [m.hotkey for m in pool] == [FIVE_RANKED[i] for i in sorted(draw_order)]
        seen_unsorted_draw |= draw_order != sorted(draw_order)
    assert seen_unsorted_draw  # the test did exercise the re-ordering
    assert [m.hotkey for m in select_pool(FIVE, 5, random.Random(0))] == FIVE_RANKED


def test_weighted_draw_validates_and_draws_everything_when_k_is_large():
    order = weighted_draw_without_replacement([1.0, 2.0, 3.0], 10, random.Random(3))
    assert sorted(order) == [0, 1, 2]
    assert weighted_draw_without_replacement([], 3, random.Random(3)) == []
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        weighted_draw_without_replacement([1.0, 0.0], 1, random.Random(3))
    with pytest.raises(ValueError, match="k must"):
        weighted_draw_without_replacement([1.0], -1, random.Random(3))
    with pytest.raises(ValueError, match="pool_size"):
        select_pool(FIVE, -2, random.Random(0))


# --- pool sizes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "task_type,lo,hi",
    [(TaskType.INSTRUCT_TEXT, 8, 15), (TaskType.DPO, 8, 15), (TaskType.GRPO, 8, 15), (TaskType.IMAGE, 15, 25)],
)
def test_pool_size_range_per_task_type(task_type, lo, hi):
    rng = random.Random(5)
    sizes = {PoolSizeConfig().pool_size_for(task_type, 1000, rng) for _ in range(2000)}
    assert sizes == set(range(lo, hi + 1))


def test_pool_size_capped_by_available_miners_and_configurable():
    rng = random.Random(5)
    assert {PoolSizeConfig().pool_size_for(TaskType.IMAGE, 6, rng) for _ in range(100)} == {6}
    assert PoolSizeConfig().pool_size_for(TaskType.DPO, 0, rng) == 0
    small = PoolSizeConfig(text_min=2, text_max=3, image_min=4, image_max=4)
    assert {small.pool_size_for(TaskType.GRPO, 100, rng) for _ in range(200)} == {2, 3}
    assert small.pool_size_for(TaskType.IMAGE, 100, rng) == 4
    with pytest.raises(ValueError, match="image_min"):
        PoolSizeConfig(image_min=30, image_max=25)
    with pytest.raises(ValueError, match="n_available"):
        PoolSizeConfig().pool_size_for(TaskType.IMAGE, -1, rng)
