"""`benchmarks.tournament_vs_default --model tiny` end to end at a tiny size (2 tasks, one DPO):
the pipeline runs (pool training, the validator's evaluation and ranking, the held-out
comparison, the table and the plot), and the held-out split shares no row with D_test, D_train
or D_synth. Not a quality claim: the tiny model learns little in a second."""

from __future__ import annotations

import json

import pytest

from benchmarks import tournament_vs_default as bench

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("family", ["dates", "json", "dpo"])
def test_splits_are_disjoint(family):
    spec = bench.TaskSpec(family, 0)
    splits = bench.make_splits(spec, 60, 10, 8, 20)
    keys = {name: {bench.row_key(r) for r in getattr(splits, name)} for name in ("train", "test", "synth", "heldout")}
    assert {name: len(v) for name, v in keys.items()} == {"train": 60, "test": 10, "synth": 8, "heldout": 20}
    for other in ("train", "test", "synth"):
        assert keys["heldout"].isdisjoint(keys[other]), other
    assert keys["test"].isdisjoint(keys["train"]) and keys["synth"].isdisjoint(keys["train"] | keys["test"])
    assert bench.make_splits(spec, 60, 10, 8, 20) == splits  # seeded


def test_tiny_tournament_end_to_end(tmp_path, capsys):
    outcomes = bench.main(
        [
            "--model",
            "tiny",
            "--tasks",
            "dates,dpo",
            "--miners",
            "2",
            "--budget",
            "1.5",
            "--threads",
            "1",
            "--train-rows",
            "40",
            "--test-rows",
            "8",
            "--synth-rows",
            "6",
            "--heldout-rows",
            "12",
            "--max-length",
            "64",
            "--cache",
            str(tmp_path / "models"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert [o.task for o in outcomes] == ["dates#0", "dpo#0"] and [o.kind for o in outcomes] == ["instruct", "dpo"]
    assert "one after another" in out and "win rate" in out and "mean relative improvement" in out
    assert "base model's held-out loss" in out and "target (win rate" in out
    for o in outcomes:
        names = {c.name for c in o.contestants}
        assert names == {"miner-1", "miner-2"} and o.default.strategy == "autotrain-default"
        assert o.winner in names  # the default is the baseline, never a contestant
        assert {c.strategy for c in o.contestants} == {"lr-range-cosine", "successive-halving"}
        ranks = sorted(c.rank for c in o.contestants)
        assert ranks[0] == 1 and next(c for c in o.contestants if c.rank == 1).name == o.winner
        for value in (o.heldout_base, o.heldout_default, o.heldout_winner):
            assert value > 0
        assert o.rows == {"train": 40, "test": 8, "synth": 6, "heldout": 12}
    assert outcomes[1].heldout_base == pytest.approx(0.6931, abs=1e-3)  # DPO: log 2 for the base
    record = json.loads((tmp_path / "out" / "tournament-tiny.json").read_text())
    assert len(record["tasks"]) == 2
    png = tmp_path / "out" / "tournament-tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
