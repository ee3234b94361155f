"""Split sizes (§3.3), determinism and leakage for services.dataset_prep.logic."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataset_prep.errors import DatasetRejected
from services.dataset_prep.logic import (
    SplitConfig,
    row_sha256,
    rows_sha256,
    split_rows,
    split_sizes,
)


def make_rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {"instruction": f"add {i} and {i + 1}", "input": "", "output": str(2 * i + 1)}
        for i in range(offset, offset + n)
    ]


@pytest.mark.parametrize(
    "n, expected",
    [
        (50, (5, 50)),  # 50·0.1 = 5; 50·1.0 = 50 < 300
        (2_000, (200, 300)),  # synth cap hit
        (20_000, (1_000, 300)),  # both caps hit
        (10_000, (1_000, 300)),  # exactly at the test cap
        (1_234, (123, 300)),  # floor(123.4)
        (299, (29, 299)),
        (9, (0, 9)),
    ],
)
def test_split_sizes_follow_the_paper(n, expected):
    assert split_sizes(n) == expected


def test_split_sizes_use_configured_constants():
    config = SplitConfig(test_fraction=0.2, test_cap=7, synth_fraction=0.5, synth_cap=11)
    assert split_sizes(30, config) == (6, 11)  # 30·0.2 = 6; min(15, 11)
    assert split_sizes(100, config) == (7, 11)


@pytest.mark.parametrize("n, n_test, n_synth", [(50, 5, 50), (2_000, 200, 300), (20_000, 1_000, 300)])
def test_split_rows_sizes_and_disjointness(n, n_test, n_synth):
    rows = make_rows(n)
    split = split_rows(rows)
    assert len(split.test) == n_test
    assert len(split.train) == n - n_test
    assert len(split.synth_sources) == n_synth
    train_hashes = {row_sha256(r) for r in split.train}
    test_hashes = {row_sha256(r) for r in split.test}
    assert not train_hashes & test_hashes
    assert train_hashes | test_hashes == {row_sha256(r) for r in rows}
    # The source sample holds distinct rows of D.
    source_hashes = [row_sha256(r) for r in split.synth_sources]
    assert len(set(source_hashes)) == n_synth
    assert set(source_hashes) <= train_hashes | test_hashes


def test_same_rows_and_seed_give_same_hashes_whatever_the_order():
    rows = make_rows(500)
    first = split_rows(rows)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    second = split_rows(shuffled)
    for a, b in [
        (first.train, second.train),
        (first.test, second.test),
        (first.synth_sources, second.synth_sources),
    ]:
        assert rows_sha256(a) == rows_sha256(b)


def test_another_seed_gives_another_split():
    rows = make_rows(500)
    a = split_rows(rows, SplitConfig(seed=1))
    b = split_rows(rows, SplitConfig(seed=2))
    assert rows_sha256(a.test) != rows_sha256(b.test)
    assert len(a.test) == len(b.test) == 50


def test_duplicates_never_straddle_train_and_test():
    base = make_rows(300)
    # Every row twice, every tenth row a third time.
    rows = base + base + base[::10]
    random.Random(3).shuffle(rows)
    split = split_rows(rows)
    test_hashes = [row_sha256(r) for r in split.test]
    assert len(test_hashes) == len(set(test_hashes)) == split_sizes(len(rows))[0]
    assert not set(test_hashes) & {row_sha256(r) for r in split.train}
    # Each test row's copies went to test only: they are neither in train nor kept twice.
    copies = sum(rows.count(r) - 1 for r in split.test)
    assert split.duplicates_moved_to_test == copies
    assert len(split.train) + len(split.test) + copies == len(rows)


def test_rows_sha256_is_the_sha256_of_the_canonical_jsonl():
    rows = [{"b": 1, "a": "é"}, {"x": [1, 2]}]
    expected = hashlib.sha256('{"a":"é","b":1}\n{"x":[1,2]}\n'.encode()).hexdigest()
    assert rows_sha256(rows) == expected
    # Key order inside a row does not change its hash.
    assert row_sha256({"a": "é", "b": 1}) == row_sha256({"b": 1, "a": "é"})


def test_synth_sources_from_test_split_cycle_when_too_few():
    rows = make_rows(50)
    split = split_rows(rows, SplitConfig(synth_source="test"))
    test_hashes = [row_sha256(r) for r in split.test]
    sources = [row_sha256(r) for r in split.synth_sources]
    assert len(sources) == 50
    assert set(sources) == set(test_hashes)  # 5 test rows, each used 10 times
    assert all(sources.count(h) == 10 for h in test_hashes)


def test_all_identical_rows_leave_no_training_data():
    rows = [{"instruction": "same", "input": "", "output": "same"}] * 40
    with pytest.raises(DatasetRejected, match="no training rows left"):
        split_rows(rows)


def test_split_config_rejects_negative_constants():
    with pytest.raises(ValueError, match="test_cap"):
        SplitConfig(test_cap=-1)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(min_value=0, max_value=40), min_size=12, max_size=120),
    seed=st.integers(min_value=0, max_value=2**31),
    permutation_seed=st.integers(min_value=0, max_value=1000),
)
def test_split_invariants_hold_for_any_rows(values, seed, permutation_seed):
    rows = [{"instruction": f"v{v}", "input": "", "output": "x"} for v in values]  # duplicates likely
    config = SplitConfig(seed=seed)
    n_test, n_synth = split_sizes(len(rows), config)
    try:
        split = split_rows(rows, config)
    except DatasetRejected:
        assert len({row_sha256(r) for r in rows}) <= n_test  # only when test swallows every row
        return
    train = [row_sha256(r) for r in split.train]
    test = [row_sha256(r) for r in split.test]
    assert len(test) == len(set(test)) == min(n_test, len(set(train) | set(test)))
    assert not set(train) & set(test)
    assert len(train) + len(test) + split.duplicates_moved_to_test == len(rows)
    assert len(split.synth_sources) == n_synth
    shuffled = rows[:]
    random.Random(permutation_seed).shuffle(shuffled)
    again = split_rows(shuffled, config)
    assert rows_sha256(again.train) == rows_sha256(split.train)
    assert rows_sha256(again.test) == rows_sha256(split.test)
    assert rows_sha256(again.synth_sources) == rows_sha256(split.synth_sources)
