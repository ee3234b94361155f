"""The tuned strategies' pure formulas against hand-computed values, sequence packing against
unpacked training losses, and the new strategies and procedural families run for real."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace

import pytest

from gradients.models import procedural
from miner_sdk.training import tuning
from miner_sdk.training.common import HyperParams, schedule_multiplier
from miner_sdk.training.strategies import STRATEGIES, halving_configs, halving_size

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_thread")]


# --- pure formulas ------------------------------------------------------------------------


def test_exponential_lrs():
    assert tuning.exponential_lrs(1e-4, 1e-2, 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert tuning.exponential_lrs(1.0, 16.0, 5) == pytest.approx([1, 2, 4, 8, 16])
    with pytest.raises(ValueError):
        tuning.exponential_lrs(1e-2, 1e-4, 3)
    with pytest.raises(ValueError):
        tuning.exponential_lrs(1e-4, 1e-2, 1)


def test_exponential_schedule_ramps_geometrically():
    # lr x end_factor^progress: from 1 to 1000 over the ramp, 10x per third.
    assert [schedule_multiplier("exponential", 0.1, p, 1000.0) for p in (0, 1 / 3, 2 / 3, 1)] == pytest.approx(
        [1, 10, 100, 1000]
    )


def test_smooth_is_a_bias_corrected_ema():
    # beta 0.5: avg1 = 0.5*4 = 2 -> /0.5 = 4; avg2 = 0.5*2 + 0.5*2 = 2 -> /0.75 = 8/3
    assert tuning.smooth([4.0, 2.0], 0.5) == pytest.approx([4.0, 8 / 3])
    assert tuning.smooth([3.0, 1.0, 2.0], 0.0) == [3.0, 1.0, 2.0]


def test_steepest_descent_pick():
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    # No smoothing: slopes per decade (log 10 each) are -0.1, -2.0, -0.5, +5 -> the second.
    losses = [3.0, 2.9, 0.9, 0.4, 5.4]
    assert tuning.steepest_descent_lr(lrs, losses, beta=0.0, diverge_factor=100) == 1e-4
    # Divergence cut: 5.4 > 4 x 0.4, so the last point is dropped (same pick here) ...
    assert tuning.steepest_descent_lr(lrs, losses, beta=0.0) == 1e-4
    # ... and a NaN ends the usable ramp.
    assert tuning.steepest_descent_lr(lrs, [3.0, 2.0, math.nan, 0.1, 0.1], beta=0.0) == 1e-5
    # No descent anywhere: the lr of the lowest loss / 10, at least lrs[0].
    assert tuning.steepest_descent_lr(lrs, [1.0, 1.1, 1.2, 1.3, 1.4], beta=0.0) == 1e-5
    assert tuning.steepest_descent_lr([1e-3, 1e-2], [1.0, 1.0], beta=0.0) == 1e-3  # 1e-4 < lrs[0]
    # With smoothing (beta 0.5), by hand: avg1 1.5 -> /0.5 = 3; avg2 0.75 + 1.0 = 1.75 -> /0.75 = 7/3;
    # avg3 0.875 + 0.5 = 1.375 -> /0.875 = 11/7; avg4 0.6875 + 0.5 = 1.1875 -> /0.9375 = 19/15
    s = tuning.smooth([3.0, 2.0, 1.0, 1.0], 0.5)
    assert s == pytest.approx([3.0, 7 / 3, 11 / 7, 19 / 15])
    # slopes (per decade, /log 10): -0.667, -0.762, -0.305 -> the second lr
    assert tuning.steepest_descent_lr(lrs[:4], [3.0, 2.0, 1.0, 1.0], beta=0.5) == 1e-4


def test_halving_plan():
    plan = tuning.halving_plan(8, 2, 120.0)
    assert [(r.index, r.configs) for r in plan] == [(0, 8), (1, 4), (2, 2), (3, 1)]
    # 4 rungs x 30 s: 30/8, 30/4, 30/2, 30 s per configuration; 5 with eta 3: 5, 2, 1 -> 20 s a rung.
    assert [r.seconds_each for r in plan] == pytest.approx([3.75, 7.5, 15.0, 30.0])
    assert [(r.configs, r.seconds_each) for r in tuning.halving_plan(5, 3, 60.0)] == [(5, 4.0), (2, 10.0), (1, 20.0)]
    assert [(r.configs, r.seconds_each) for r in tuning.halving_plan(1, 2, 10.0)] == [(1, 10.0)]
    with pytest.raises(ValueError):
        tuning.halving_plan(4, 1, 10.0)


def test_survivors_and_halving_size():
    assert tuning.survivors([0.5, None, 0.2, 0.9], 2) == [0, 2]
    assert tuning.survivors([math.nan, 0.3, 0.3], 1) == [1]
    assert tuning.survivors([None, None], 1) == [0]
    # n = 8 needs 2*8*1.5*v <= 0.3 s and a rung-0 slice 0.75 s / 4 rungs / 8 >= 4 * (1.5 v + 0.2).
    assert halving_size(100.0, 0.1) == 8  # 2.4 <= 30; 2.34 >= 1.4
    assert halving_size(40.0, 0.2) == 4  # n=8: 0.94 < 2.0; n=4: 30/3/4 = 2.5 >= 2.0, 2.4 <= 12
    assert halving_size(100.0, 1.0) == 2  # n=4: 6.25 < 6.8; n=2: 18.75 >= 6.8, 6 <= 30
    assert halving_size(5.0, 1.0) == 1


def test_halving_configs_cover_the_search_space():
    configs = halving_configs(HyperParams(), random.Random(3), 8, packing=True)
    assert configs == halving_configs(HyperParams(), random.Random(3), 8, packing=True)
    for hp in configs:
        assert 1e-4 <= hp.learning_rate <= 3e-3 and hp.lora_r in (4, 8, 16, 32)
        assert hp.lora_alpha // hp.lora_r in (1, 2, 4) and hp.lora_dropout in (0.0, 0.05, 0.1)
        assert hp.lora_target in ("all-linear", "attention", "mlp") and hp.epochs in (1.0, 2.0, 3.0)
        assert hp.packing
    assert len({(h.learning_rate, h.lora_r) for h in configs}) == 8


def test_pack_lengths_first_fit_decreasing():
    # Longest first: 7 opens pack A (room 3); 5 opens pack B (room 5); 4 fits B (room 1);
    # 3 fits A (room 0); 1 does not fit A, fits B.
    assert tuning.pack_lengths([7, 5, 4, 3, 1], 10) == [[0, 3], [1, 2, 4]]
    assert tuning.pack_lengths([12, 2], 10) == [[0], [1]]  # too long: a pack of its own
    assert tuning.pack_lengths([], 8) == []
    assert tuning.segment_positions([3, 2]) == [0, 1, 2, 0, 1]


def test_autotrain_default_stays_autotrain():
    strategy = STRATEGIES["autotrain-default"]
    assert not strategy.holdout and not strategy.extend and strategy.search is None
    (hp,) = strategy.propose(HyperParams(), random.Random(0))
    assert hp == HyperParams() and not hp.packing and hp.eval_every_s == 0 and hp.lora_target == "all-linear"


# --- packing against unpacked losses ------------------------------------------------------


def test_packed_loss_equals_unpacked_loss(tiny_llama):
    import torch

    from miner_sdk.training.sft import (
        encode_rows,
        load_text_base,
        pack_examples,
        packed_sft_loss,
        pad_id,
        sft_loss,
    )

    base = load_text_base(tiny_llama)
    rows = procedural.generate("dates", 6, 0) + procedural.generate("strings", 5, 1)
    examples = encode_rows(base.tokenizer, rows, 128)
    lengths = [len(e.prompt_ids) + len(e.completion_ids) for e in examples]
    packs = pack_examples(examples, 3 * max(lengths))
    assert len(packs) < len(examples) and sorted(id(e) for p in packs for e in p.segments) == sorted(map(id, examples))
    pad = pad_id(base.tokenizer)
    with torch.no_grad():
        packed = packed_sft_loss(base.model, packs, pad, base.device)
        unpacked = sft_loss(base.model, examples, pad, base.device)
        one_pack = packed_sft_loss(base.model, packs[:1], pad, base.device)
        its_rows = sft_loss(base.model, list(packs[0].segments), pad, base.device)
    # Attention never crosses examples: the same token-weighted loss as one row at a time.
    assert float(packed) == pytest.approx(float(unpacked), abs=1e-4)
    assert float(one_pack) == pytest.approx(float(its_rows), abs=1e-4)


# --- procedural families -------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(procedural.FORMAT_FAMILIES))
def test_format_families_are_seeded_and_correct(family):
    rows = procedural.generate(family, 30, 4)
    assert rows == procedural.generate(family, 30, 4) and rows != procedural.generate(family, 30, 5)
    for row in rows:
        assert set(row) == {"instruction", "input", "output"} and row["output"]
        if family == "dates":
            y, m, d = row["input"].split("-")
            assert row["output"] == f"{d}/{m}/{y}"
        elif family == "sorting":
            assert row["output"].split() == [str(n) for n in sorted(int(x) for x in row["input"].split())]
        elif family == "json":
            name, age, city = row["input"].split(", ")
            assert json.loads(row["output"]) == {"name": name, "age": int(age), "city": city}
        else:
            assert row["output"] == ("even" if int(row["input"]) % 2 == 0 else "odd")
    distinct = procedural.generate_distinct(family, 100, 4)
    assert len({json.dumps(r, sort_keys=True) for r in distinct}) == 100


def test_demo_families_unchanged():
    assert list(procedural.FAMILIES) == ["arithmetic", "strings", "recall"]
    with pytest.raises(ValueError, match="fewer than"):
        procedural.distinct(lambda k: [{"x": "1"}] * k, 2)


# --- the new strategies, for real on the tiny model -------------------------------------------


def instruct_rows() -> list[dict]:
    return procedural.generate_distinct("dates", 40, 0)


@pytest.mark.parametrize("strategy", ["lr-range-cosine", "successive-halving"])
def test_tuned_strategy_uses_its_budget_and_beats_the_base(strategy, tiny_llama, tmp_path):
    from miner_sdk.training import Deadline, train

    # Successive halving needs room for several rungs of trials (each pays its setup and score).
    deadline = Deadline.after(4.0 if strategy == "lr-range-cosine" else 10.0, upload_margin_s=0.5)
    result = train(
        strategy, "instruct", tiny_llama, instruct_rows(), tmp_path, deadline, seed=1, overrides={"max_length": 64}
    )
    finished = time.time()
    assert finished < deadline.at, f"finished {finished - deadline.at:.2f}s after the deadline"
    # It keeps training until its guard stops it (AutoTrain's 1 epoch would end far earlier).
    assert deadline.training_end - finished < 1.5
    assert result.strategy == strategy and not result.note
    assert result.best_val_loss is not None and result.best_val_loss < result.base_val_loss
    assert result.history[0] == (0.0, result.base_val_loss, "base")
    assert min(v for _, v, _ in result.history) == pytest.approx(result.best_val_loss)
    labels = [t.label for t in result.trials]
    if strategy == "lr-range-cosine":
        assert labels[0] == "lr range test" and labels[1].startswith("cosine from")
        ramp = result.trials[0].run
        assert ramp is not None and len(ramp.lrs) >= 2 and ramp.lrs == sorted(ramp.lrs)
        assert result.trials[1].hparams.packing and result.trials[1].hparams.scheduler == "cosine"
    else:
        assert sum(label.startswith("rung 0") for label in labels) >= 2
        continued = [t for t in result.trials if t.init_from is not None]
        assert continued, "survivors continue from their own adapters"


def test_tuned_strategy_falls_back_for_grpo_clearly(tiny_llama, tmp_path):
    from miner_sdk.training.strategies import Strategy

    # Only the routing is checked here (GRPO training itself is covered in test_miner_training).
    s: Strategy = STRATEGIES["successive-halving"]
    assert s.task_types is not None and "grpo" not in {t.value for t in s.task_types} and s.fallback == "lr-sweep"


def test_dpo_runs_lr_range_cosine(tiny_llama, tmp_path):
    from miner_sdk.training import Deadline, train

    rows = procedural.distinct(lambda k: procedural.preference_rows(k, 0), 30)
    result = train(
        "lr-range-cosine",
        "dpo",
        tiny_llama,
        rows,
        tmp_path,
        Deadline.after(3.0, upload_margin_s=0.5),
        overrides={"max_length": 64},
    )
    assert result.base_val_loss == pytest.approx(math.log(2), abs=1e-6)
    assert not result.trials[1].hparams.packing  # DPO trains unpacked
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_continuing_an_adapter_starts_from_its_weights(tiny_llama, tmp_path):
    from miner_sdk.training import Deadline
    from miner_sdk.training.sft import SftTrainer

    trainer = SftTrainer()
    base = trainer.load(tiny_llama)
    rows = instruct_rows()
    hp = replace(HyperParams(), max_length=64, learning_rate=1e-3, epochs=2.0, lora_target="attention")
    first = trainer.run_trial(base, rows, rows[:8], hp, tmp_path / "a", Deadline.after(30), 0)
    # Zero further steps: the continued adapter is the saved one, so the score is the same.
    again = trainer.run_trial(
        base,
        rows,
        rows[:8],
        replace(hp, max_steps=1, learning_rate=1e-12),
        tmp_path / "b",
        Deadline.after(30),
        0,
        init_adapter=tmp_path / "a",
    )
    assert again.val_loss == pytest.approx(first.val_loss, abs=1e-4)
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
