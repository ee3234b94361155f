"""Scoring (paper §3.4.1, §3.5): every equation against values computed by hand from the paper's
constants (arithmetic in the comments), plus order-independence properties."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scorer.logic import (
    ScoredTask,
    SubmissionResult,
    TaskInfo,
    build_score_table,
    compute_weights_digest,
    eq10_sigma,
    explain_miner,
    final_scores,
    final_transform,
    find_duplicates,
    normalise_window,
    paired_bootstrap_confidence,
    replay,
    score_task,
    suspicious_flags,
    task_score_for_rank,
    task_weight,
    weighted_image_loss,
    weighted_text_loss,
)
from services.scorer.scoring_config import DAY_S, ScoringConfig

CFG = ScoringConfig()
NOW = 1_800_000_000.0  # a fixed "now" in unix seconds (an integer, so window edges are exact)
TASK = TaskInfo(task_id="task-1", model_params_billions=8.0, hours=2.0, completed_at=NOW)  # W_task = 8


def ok(
    hotkey: str,
    l_weighted: float,
    *,
    l_test: float | None = None,
    l_synth: float | None = None,
    t: float = 0.0,
    seq: int = 0,
    **kw,
) -> SubmissionResult:
    # Distinct test/synth by default so only explicitly built pairs are eq 9 duplicates.
    return SubmissionResult(
        miner_hotkey=hotkey,
        valid=True,
        l_test=l_weighted if l_test is None else l_test,
        l_synth=l_weighted if l_synth is None else l_synth,
        l_weighted=l_weighted,
        upload_time=t,
        upload_seq=seq,
        **kw,
    )


def failed(hotkey: str, reason: str = "not a fine-tune of the base model") -> SubmissionResult:
    return SubmissionResult(miner_hotkey=hotkey, valid=False, fail_reason=reason)


def scores_of(result) -> dict[str, float]:
    return {m.miner_hotkey: m.task_score for m in result.miners}


# --------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers_constants():
    c = ScoringConfig()
    assert (c.duplicate_epsilon, c.suspicious_alpha) == (1e-6, 0.5)
    assert (c.first_place_score, c.penalty_score, c.penalty_fraction, c.failed_submission_score) == (
        3.0,
        -1.0,
        0.25,
        -1.0,
    )
    assert (c.test_weight_omega, c.image_text_weight_delta) == (0.7, 0.25)
    assert c.window_days == (1.0, 3.0, 7.0) and c.window_weights == (0.3, 0.3, 0.4)
    sigmoid = (
        c.sigmoid_weight_beta,
        c.linear_weight,
        c.sigmoid_steepness_gamma,
        c.sigmoid_shift_mu,
        c.sigmoid_power_nu,
    )
    assert sigmoid == (0.7, 0.05, 9.0, 0.5, 0.75)
    assert c.min_confidence_for_first is None


def test_config_digest_is_stable_and_pins_every_value():
    assert ScoringConfig().digest() == ScoringConfig().digest()
    assert len(ScoringConfig().digest()) == 64
    assert ScoringConfig(suspicious_alpha=0.6).digest() != ScoringConfig().digest()
    assert ScoringConfig(version="2026.11.2").digest() != ScoringConfig().digest()
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.penalty_score = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"window_weights": (0.3, 0.3, 0.3)}, "window_weights"),
        ({"window_days": (1.0, 3.0)}, "window_days"),
        ({"penalty_fraction": 1.5}, "penalty_fraction"),
        ({"duplicate_epsilon": -1.0}, "duplicate_epsilon"),
        ({"min_confidence_for_first": 0.0}, "min_confidence_for_first"),
        ({"bootstrap_samples": 0}, "bootstrap_samples"),
        ({"first_place_score": float("nan")}, "first_place_score"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ScoringConfig(**kwargs)


def test_weighted_losses():
    # text: 0.7·1.0 + 0.3·2.0 = 0.7 + 0.6 = 1.3
    assert weighted_text_loss(1.0, 2.0) == pytest.approx(1.3)
    # image: 0.25·1.0 + 0.75·2.0 = 0.25 + 1.5 = 1.75
    assert weighted_image_loss(1.0, 2.0) == pytest.approx(1.75)


def test_valid_submission_needs_finite_losses():
    with pytest.raises(ValueError, match="l_weighted"):
        SubmissionResult(miner_hotkey="a", valid=True, l_test=1.0, l_weighted=float("nan"))
    with pytest.raises(ValueError, match="l_test"):
        SubmissionResult(miner_hotkey="a", valid=True, l_weighted=1.0)
    # A failed one carries no losses.
    assert failed("a").l_test is None


# --------------------------------------------------------------------------- eq 9 duplicates


def test_duplicates_credit_only_the_earliest_upload():
    a = ok("a", 1.3, l_test=1.0, l_synth=2.0, t=10.0)
    # |ΔL_test| = 5e-7 < 1e-6 and |ΔL_synth| = 5e-7 < 1e-6 → duplicate of a (uploaded later)
    b = ok("b", 1.3, l_test=1.0 + 5e-7, l_synth=2.0 - 5e-7, t=20.0)
    # |ΔL_test| = 2e-6 ≥ 1e-6 → not a duplicate of a; vs b 1.5e-6 → not either
    c = ok("c", 1.3000014, l_test=1.000002, l_synth=2.0, t=30.0)
    # test equal, synth differs by 1e-3 → not a duplicate (eq 9 needs both)
    d = ok("d", 1.3003, l_test=1.0, l_synth=2.001, t=40.0)
    assert find_duplicates([d, c, b, a], CFG.duplicate_epsilon) == {"b": "a"}


def test_duplicate_earliest_is_by_upload_time_then_sequence_not_list_order():
    first = ok("zz", 1.0, l_test=1.0, l_synth=1.0, t=5.0, seq=7)
    later = ok("aa", 1.0, l_test=1.0, l_synth=1.0, t=5.0, seq=8)  # same second, later sequence
    assert find_duplicates([later, first], CFG.duplicate_epsilon) == {"aa": "zz"}
    assert find_duplicates([ok("x", 1.0, l_test=1.0, l_synth=1.0, t=9.0), first], CFG.duplicate_epsilon) == {"x": "zz"}


def test_copy_of_a_copy_is_a_duplicate():
    # a–b: Δ 0.7e-6 < ε; b–c: Δ 0.7e-6 < ε; a–c: Δ 1.4e-6 ≥ ε. c matches an earlier upload (b),
    # so it is a duplicate even though b itself is not credited.
    a = ok("a", 1.0, l_test=1.0, l_synth=1.0, t=1.0)
    b = ok("b", 1.0, l_test=1.0 + 0.7e-6, l_synth=1.0, t=2.0)
    c = ok("c", 1.0, l_test=1.0 + 1.4e-6, l_synth=1.0, t=3.0)
    assert find_duplicates([c, b, a], CFG.duplicate_epsilon) == {"b": "a", "c": "b"}


def test_missing_synth_matches_only_missing_synth():
    a = ok("a", 1.0, l_test=1.0, t=1.0)
    a = dataclasses.replace(a, l_synth=None)
    b = dataclasses.replace(ok("b", 1.0, l_test=1.0, t=2.0), l_synth=None)
    c = ok("c", 1.0, l_test=1.0, l_synth=1.0, t=3.0)
    assert find_duplicates([a, b, c], CFG.duplicate_epsilon) == {"b": "a"}


def test_duplicate_is_scored_as_failed_with_reason():
    result = score_task(
        TASK,
        [
            ok("orig", 1.0, l_test=1.0, l_synth=1.0, t=1.0),
            ok("copy", 1.0, l_test=1.0, l_synth=1.0, t=2.0),
            ok("other", 2.0, t=3.0),
        ],
    )
    lines = result.by_hotkey()
    assert lines["copy"].duplicate and lines["copy"].rank == 0 and "duplicate of orig" in lines["copy"].reason
    # credited: orig, other (n = 2) → orig 3.0, other rank 2 > 2·0.75 = 1.5 → −1; copy failed → −1
    assert scores_of(result) == {"orig": 3.0, "other": -1.0, "copy": -1.0}
    # adjusted = S_task · W_task, W_task = 2·sqrt(8·2) = 8
    assert lines["orig"].adjusted == 24.0 and lines["copy"].adjusted == -8.0


def test_epsilon_zero_disables_duplicates():
    same = [ok("a", 1.0, t=1.0), ok("b", 1.0, t=2.0)]
    assert find_duplicates(same, 0.0) == {}


# --------------------------------------------------------------------------- eq 10 suspicious


def test_suspicious_uses_population_std():
    # L_test = 1, 2, 3: mean 2, population σ = sqrt((1 + 0 + 1)/3) = sqrt(2/3) = 0.81650; α·σ = 0.40825
    # synth 1.40 > 1 + 0.40825? no;  2.41 > 2.40825? yes;  3.0 > 3.40825? no.
    # (With the sample std σ = 1, α·σ = 0.5 and 2.41 would not be flagged.)
    assert suspicious_flags([1.0, 2.0, 3.0], [1.40, 2.41, 3.0], 0.5) == [False, True, False]
    assert suspicious_flags([1.0, 2.0], [None, 9.0], 0.5) == [False, True]
    assert suspicious_flags([], [], 0.5) == []


def test_suspicious_only_flags_never_changes_the_score():
    results = [
        ok("a", 1.0, l_test=1.0, l_synth=1.0),
        ok("b", 1.1, l_test=1.1, l_synth=1.1),
        ok("c", 1.2, l_test=0.5, l_synth=5.0),
    ]
    lines = score_task(TASK, results).by_hotkey()
    assert lines["c"].suspicious and "suspicious" in lines["c"].reason
    # n = 3: ranks 1, 2, 3 → 3, 0, −1 (3 > 3·0.75 = 2.25); c (rank 3) keeps its −1, not zeroed
    assert (lines["a"].task_score, lines["b"].task_score, lines["c"].task_score) == (3.0, 0.0, -1.0)
    assert not lines["a"].suspicious


def test_eq10_sigma_is_undefined_below_two_submissions():
    # [1, 3]: mean 2, population σ = sqrt((1 + 1)/2) = 1
    assert eq10_sigma([1.0, 3.0]) == 1.0
    assert eq10_sigma([2.5]) is None and eq10_sigma([]) is None
    # One submission: no σ, so no flag however far L_synth is above L_test (np.std would say 0).
    assert suspicious_flags([1.0], [9.0], 0.5) == [False]


def test_one_valid_submission_is_never_flagged_and_has_no_rank1_confidence():
    result = score_task(TASK, [ok("a", 1.0, l_test=1.0, l_synth=9.0, per_example_test=[1.0] * 4), failed("b")])
    lines = result.by_hotkey()
    assert not lines["a"].suspicious and lines["a"].reason == "first place"
    assert result.rank1_confidence is None
    assert scores_of(result) == {"a": 3.0, "b": -1.0}


def test_two_valid_submissions_are_flagged_and_get_a_confidence():
    # L_test 1 and 2: σ = 0.5, α·σ = 0.25; a: 1.3 > 1.25 flagged; b: 2.2 > 2.25 not.
    # Every bootstrap resample of (second − first) = 1 > 0, so the confidence is exactly 1.
    result = score_task(
        TASK,
        [
            ok("a", 1.0, l_test=1.0, l_synth=1.3, per_example_test=[1.0] * 4),
            ok("b", 2.0, l_test=2.0, l_synth=2.2, per_example_test=[2.0] * 4),
        ],
    )
    lines = result.by_hotkey()
    assert lines["a"].suspicious and not lines["b"].suspicious
    assert result.rank1_confidence == 1.0


def test_all_failed_is_neither_flagged_nor_confident():
    result = score_task(TASK, [failed("a"), failed("b")])
    assert result.rank1_confidence is None and not any(m.suspicious for m in result.miners)


# --------------------------------------------------------------------------- eq 11 task score


@pytest.mark.parametrize(
    "n, expected",
    [
        (1, [3.0]),  # rank 1 always first place
        (2, [3.0, -1.0]),  # threshold 2·0.75 = 1.5 → rank 2 penalised
        (3, [3.0, 0.0, -1.0]),  # threshold 2.25 → rank 3
        (4, [3.0, 0.0, 0.0, -1.0]),  # threshold 3 → rank 4 only (rank > 3)
        (5, [3.0, 0.0, 0.0, -1.0, -1.0]),  # threshold 3.75 → ranks 4, 5
        (8, [3.0, 0, 0, 0, 0, 0, -1.0, -1.0]),  # threshold 6 → ranks 7, 8
    ],
)
def test_task_score_by_rank(n, expected):
    assert [task_score_for_rank(r, n) for r in range(1, n + 1)] == expected


def test_penalty_threshold_is_exact_in_decimal():
    # ρ = 0.1, n = 10: threshold 10·0.9 = 9 exactly → only rank 10 penalised, rank 9 not.
    cfg = ScoringConfig(penalty_fraction=0.1)
    assert task_score_for_rank(9, 10, cfg) == 0.0 and task_score_for_rank(10, 10, cfg) == -1.0


def test_task_score_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        task_score_for_rank(0, 3)
    with pytest.raises(ValueError, match="rank"):
        task_score_for_rank(4, 3)


def test_ranks_by_weighted_loss_lower_is_better():
    # GRPO: the eval worker passes loss = −reward, so reward 0.9 (loss −0.9) beats reward 0.5.
    result = score_task(TASK, [ok("r05", -0.5), ok("r09", -0.9), ok("r01", -0.1), ok("r07", -0.7)])
    ranks = {m.miner_hotkey: m.rank for m in result.miners}
    assert ranks == {"r09": 1, "r07": 2, "r05": 3, "r01": 4}
    assert scores_of(result) == {"r09": 3.0, "r07": 0.0, "r05": 0.0, "r01": -1.0}


def test_tie_on_weighted_loss_goes_to_the_earlier_upload():
    # Same L_weighted 1.3 from different (test, synth): 0.7·1.0 + 0.3·2.0 = 1.3 and 0.7·1.3 + 0.3·1.3
    # = 1.3 (passed as the same float) — not duplicates (L_test differs by 0.3), but an exact tie on
    # the ranking loss → the earlier upload ranks first, whatever the hotkeys or list order.
    early = ok("zz-early", 1.3, l_test=1.0, l_synth=2.0, t=100.0)
    late = ok("aa-late", 1.3, l_test=1.3, l_synth=1.3, t=200.0)
    for order in ([early, late], [late, early]):
        ranks = {m.miner_hotkey: m.rank for m in score_task(TASK, order).miners}
        assert ranks == {"zz-early": 1, "aa-late": 2}
    # Same time → upload sequence decides.
    a = ok("b", 1.0, l_test=0.9, l_synth=1.2333333, t=5.0, seq=2)
    b = ok("a", 1.0, l_test=1.1, l_synth=0.7666667, t=5.0, seq=1)
    assert score_task(TASK, [a, b]).miners[0].miner_hotkey == "a"


def test_failed_submissions_penalised_only_when_a_valid_one_exists():
    result = score_task(TASK, [ok("good", 1.0), failed("bad1"), failed("bad2", "")])
    lines = result.by_hotkey()
    # single valid miner → 3.0; failures → −1, adjusted −1·8 = −8
    assert scores_of(result) == {"good": 3.0, "bad1": -1.0, "bad2": -1.0}
    assert lines["bad1"].reason == "failed: not a fine-tune of the base model"
    assert lines["bad2"].reason == "failed: evaluation failed" and lines["bad2"].adjusted == -8.0


def test_all_failed_gives_zero_to_everyone():
    result = score_task(TASK, [failed("a"), failed("b"), failed("c")])
    assert scores_of(result) == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert all(m.rank == 0 and m.adjusted == 0.0 for m in result.miners)
    assert result.rank1_confidence is None


def test_no_results_is_an_empty_task():
    assert score_task(TASK, []).miners == ()


def test_single_miner_gets_first_place():
    result = score_task(TASK, [ok("only", 5.0)])
    assert scores_of(result) == {"only": 3.0} and result.miners[0].adjusted == 24.0


def test_thousand_miners():
    # n = 1000: threshold 1000·0.75 = 750 → rank 1: 3.0; ranks 2..750: 0 (749 miners);
    # ranks 751..1000: −1 (250 miners). Losses 1.000, 1.001, ... so hotkey mNNNN has rank NNNN+1.
    results = [ok(f"m{i:04d}", 1.0 + i / 1000, t=float(i)) for i in range(1000)]
    random.Random(3).shuffle(results)
    result = score_task(TASK, results)
    values = [m.task_score for m in result.miners]
    assert values.count(3.0) == 1 and values.count(0.0) == 749 and values.count(-1.0) == 250
    lines = result.by_hotkey()
    assert lines["m0000"].task_score == 3.0
    assert lines["m0749"].rank == 750 and lines["m0749"].task_score == 0.0
    assert lines["m0750"].rank == 751 and lines["m0750"].task_score == -1.0


def test_duplicate_hotkey_in_results_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        score_task(TASK, [ok("a", 1.0), ok("a", 2.0)])


_result_strategy = st.lists(
    st.tuples(
        st.booleans(),  # valid
        st.sampled_from([0.5, 1.0, 1.0, 1.5, 2.0]),  # l_test (repeats → duplicates / ties)
        st.sampled_from([0.5, 1.0, 2.0]),  # l_synth
        st.integers(0, 5),  # upload time
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(_result_strategy, st.randoms(use_true_random=False))
def test_task_scores_do_not_depend_on_result_order(rows, rnd):
    results = []
    for i, (valid, lt, ls, t) in enumerate(rows):
        if valid:
            results.append(ok(f"hk{i}", weighted_text_loss(lt, ls), l_test=lt, l_synth=ls, t=float(t), seq=i))
        else:
            results.append(failed(f"hk{i}"))
    shuffled = list(results)
    rnd.shuffle(shuffled)
    a, b = score_task(TASK, results), score_task(TASK, shuffled)
    assert a == b
    # Exactly one first place whenever anything was credited.
    credited = [m for m in a.miners if m.rank > 0]
    assert sum(m.task_score == 3.0 for m in a.miners) == (1 if credited else 0)


# --------------------------------------------------------------------------- eq 12 task weight


@pytest.mark.parametrize(
    "phi, hours, expected",
    [
        (8.0, 2.0, 8.0),  # 2·sqrt(16) = 8
        (7.0, 7.0, 14.0),  # 2·sqrt(49) = 14
        (0.5, 0.5, 1.0),  # 2·sqrt(0.25) = 1 → max(1, 1) = 1
        (0.1, 1.0, 1.0),  # 2·sqrt(0.1) = 0.632 → floored to 1
        (0.0, 3.0, 1.0),  # 0 → 1
        (70.0, 10.0, 52.91502622129181),  # 2·sqrt(700) = 2·26.457513 = 52.915026
    ],
)
def test_task_weight(phi, hours, expected):
    assert task_weight(phi, hours) == pytest.approx(expected, rel=1e-12)


def test_task_weight_rejects_negative():
    with pytest.raises(ValueError):
        task_weight(-1.0, 2.0)


# --------------------------------------------------------------------------- bootstrap (beyond)


def test_bootstrap_clear_winner_and_exact_tie():
    # every example: rank 1 loss 1.0, rank 2 loss 2.0 → every resample Δ = +1 > 0 → 1.0
    assert paired_bootstrap_confidence([1.0] * 50, [2.0] * 50, samples=200) == 1.0
    # identical losses → every Δ = 0 → counted half → 0.5
    assert paired_bootstrap_confidence([1.0] * 50, [1.0] * 50, samples=200) == 0.5


def test_bootstrap_matches_the_exact_resampling_probability():
    # Δ per example = (+1, +1, −1). A resample of 3 has mean > 0 iff ≥ 2 draws are +1:
    # P = 3·(2/3)²·(1/3) + (2/3)³ = 12/27 + 8/27 = 20/27 = 0.7407 (mean is never exactly 0).
    # 20,000 resamples: standard error sqrt(0.74·0.26/20000) = 0.0031 → 0.015 is ~5 s.e.
    c = paired_bootstrap_confidence([0.0, 0.0, 1.0], [1.0, 1.0, 0.0], samples=20_000, seed=5)
    assert abs(c - 20 / 27) < 0.015


def test_bootstrap_weights_test_and_synth_like_l_weighted():
    # test: rank 1 better by 1 everywhere; synth: worse by 1 everywhere.
    # w = 0.7: Δ = 0.7·1 − 0.3·1 = 0.4 > 0 → 1.0;  w = 0.2: Δ = 0.2 − 0.8 = −0.6 → 0.0
    args = ([1.0] * 20, [2.0] * 20, [2.0] * 20, [1.0] * 20)
    assert paired_bootstrap_confidence(*args, test_weight=0.7, samples=100) == 1.0
    assert paired_bootstrap_confidence(*args, test_weight=0.2, samples=100) == 0.0


def test_bootstrap_is_deterministic_for_a_seed_and_checks_lengths():
    rng = random.Random(0)
    first = [rng.random() for _ in range(40)]
    second = [v + rng.gauss(0.02, 0.3) for v in first]
    assert paired_bootstrap_confidence(first, second, seed=11) == paired_bootstrap_confidence(first, second, seed=11)
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_confidence([1.0, 2.0], [1.0])


def _noisy_pair() -> tuple[SubmissionResult, SubmissionResult, SubmissionResult]:
    # rank 1 mean 1.0 vs rank 2 mean 1.01, with per-example noise ±0.5: confidence far from 0.95.
    rng = random.Random(1)
    base = [rng.uniform(0.5, 1.5) for _ in range(60)]
    noise = [rng.choice([-0.5, 0.5]) for _ in range(60)]
    first = base
    second = [b + n for b, n in zip(base, noise)]
    shift = sum(second) / 60 - sum(first) / 60
    second = [v - shift + 0.01 for v in second]  # mean(second) − mean(first) = 0.01 exactly-ish
    mean1, mean2 = sum(first) / 60, sum(second) / 60
    return (
        ok("one", mean1, l_test=mean1, l_synth=mean1 + 0.1, per_example_test=first),
        ok("two", mean2, l_test=mean2, l_synth=mean2 + 0.1, per_example_test=second),
        ok("three", 5.0, l_test=5.0, l_synth=5.1, per_example_test=[5.0] * 60),
    )


def test_low_confidence_withholds_first_place_when_configured():
    results = _noisy_pair()
    paper = score_task(TASK, results)  # min_confidence None: paper rule, confidence only reported
    assert paper.rank1_confidence is not None and 0.3 < paper.rank1_confidence < 0.95
    assert scores_of(paper) == {"one": 3.0, "two": 0.0, "three": -1.0}

    strict = score_task(TASK, results, ScoringConfig(min_confidence_for_first=0.95))
    lines = strict.by_hotkey()
    # ranks 1 and 2 both get 0; rank 3 keeps eq 11's −1 (3 > 2.25)
    assert scores_of(strict) == {"one": 0.0, "two": 0.0, "three": -1.0}
    assert "withheld" in lines["one"].reason and "withheld" in lines["two"].reason
    assert strict.rank1_confidence == paper.rank1_confidence


def test_confident_first_place_is_kept_and_missing_examples_skip_the_check():
    clear = [ok("one", 1.0, per_example_test=[1.0] * 30), ok("two", 2.0, per_example_test=[2.0] * 30)]
    result = score_task(TASK, clear, ScoringConfig(min_confidence_for_first=0.95))
    assert result.rank1_confidence == 1.0 and scores_of(result) == {"one": 3.0, "two": -1.0}
    bare = score_task(TASK, [ok("one", 1.0), ok("two", 2.0)], ScoringConfig(min_confidence_for_first=0.95))
    assert bare.rank1_confidence is None and scores_of(bare) == {"one": 3.0, "two": -1.0}


# --------------------------------------------------------------------------- eq 13 temporal


D = DAY_S


def _example_records() -> list[ScoredTask]:
    return [
        ScoredTask("t1", NOW - 0.5 * D, {"A": 3.0, "B": 0.0, "C": -1.0}),
        ScoredTask("t2", NOW - 2 * D, {"A": 0.0, "B": 6.0, "C": -2.0}),
        ScoredTask("t3", NOW - 5 * D, {"A": -1.0, "B": 0.0, "C": 3.0}),
        ScoredTask("t4", NOW - 8 * D, {"A": 3.0, "D": 3.0}),  # older than 7 d: in no window
    ]


def test_temporal_windows_by_hand():
    r = replay(_example_records(), NOW)
    # D only appears 8 days ago → not listed.
    assert r.hotkeys == ("A", "B", "C")
    # 1d: t1        → sums A 3, B 0, C −1 → / 3 → A 1, B 0, C 0 (negative clamped)
    # 3d: t1+t2     → sums A 3, B 6, C −3 → / 6 → A 0.5, B 1, C 0
    # 7d: t1+t2+t3  → sums A 2, B 6, C 0  → / 6 → A 1/3, B 1, C 0
    assert r.window_sums == ((3.0, 0.0, -1.0), (3.0, 6.0, -3.0), (2.0, 6.0, 0.0))
    assert r.window_normalised[0] == (1.0, 0.0, 0.0)
    assert r.window_normalised[1] == (0.5, 1.0, 0.0)
    assert r.window_normalised[2] == pytest.approx((1 / 3, 1.0, 0.0))
    # temporal A = 0.3·1 + 0.3·0.5 + 0.4·(1/3) = 0.3 + 0.15 + 0.13333 = 0.58333
    # temporal B = 0.3·0 + 0.3·1 + 0.4·1 = 0.7;  C = 0
    assert r.temporal == pytest.approx((0.5833333333333333, 0.7, 0.0), abs=1e-15)
    # final: max = 0.7. B: x = 1 → 0.7442239 (see test_final_transform_at_one).
    # A: x = 0.58333/0.7 = 0.83333; sigmoid(9·0.33333) = sigmoid(3) = 1/(1+e^−3) = 0.9525741;
    #    ^0.75 = 0.9642154; ·0.7 = 0.6749508; + 0.05·0.83333 = 0.0416667 → 0.7166175.
    # C: temporal 0 → 0.
    assert r.final == pytest.approx((0.7166175, 0.7442239, 0.0), abs=1e-7)
    assert r.final_by_hotkey()["B"] == max(r.final)


def test_window_edge_inclusive_and_exclusive():
    exactly_one_day = ScoredTask("edge", NOW - 1 * D, {"E": 3.0})
    just_over = ScoredTask("over", NOW - 1 * D - 1, {"O": 3.0})
    anchor = ScoredTask("anchor", NOW - 2 * D, {"E": 0.0, "O": 0.0})
    records = [exactly_one_day, just_over, anchor]
    inclusive = replay(records, NOW, ScoringConfig(window_edge_inclusive=True))
    # exactly 1 d old → inside the 1 d window; 1 d + 1 s → outside it (but inside 3 d and 7 d)
    assert dict(zip(inclusive.hotkeys, inclusive.window_sums[0])) == {"E": 3.0, "O": 0.0}
    assert dict(zip(inclusive.hotkeys, inclusive.window_sums[1])) == {"E": 3.0, "O": 3.0}
    exclusive = replay(records, NOW, ScoringConfig(window_edge_inclusive=False))
    # reference semantics (created_at > now − 1 d): exactly 1 d old is outside
    assert dict(zip(exclusive.hotkeys, exclusive.window_sums[0])) == {"E": 0.0, "O": 0.0}
    # 7 d edge: a task exactly 7 d old still lists its miner (inclusive) and adds to the 7 d sum
    seven = replay([ScoredTask("old", NOW - 7 * D, {"S": 3.0})], NOW)
    assert seven.hotkeys == ("S",) and seven.window_sums == ((0.0,), (0.0,), (3.0,))
    assert replay([ScoredTask("old", NOW - 7 * D - 1, {"S": 3.0})], NOW).hotkeys == ()


def test_tasks_after_now_are_ignored():
    r = replay([ScoredTask("future", NOW + 60, {"F": 3.0}), ScoredTask("past", NOW - 60, {"P": 3.0})], NOW)
    assert r.hotkeys == ("P",)


def test_normalise_window_clamps_negatives_and_handles_all_non_positive():
    import numpy as np

    # max 4 → 4/4 = 1, 2/4 = 0.5, −3 → 0
    assert normalise_window(np.array([4.0, 2.0, -3.0])).tolist() == [1.0, 0.5, 0.0]
    assert normalise_window(np.array([-1.0, 0.0, -3.0])).tolist() == [0.0, 0.0, 0.0]
    assert normalise_window(np.array([])).tolist() == []


# --------------------------------------------------------------------------- eqs 14–15 final


def test_final_transform_at_zero():
    # sigmoid(9·(0 − 0.5)) = 1/(1 + e^4.5) = 1/91.0171313 = 0.0109869426
    # ^0.75 = exp(0.75·ln 0.0109869426) = exp(0.75·(−4.5110960)) = exp(−3.3833220) = 0.0339357649
    # 0.7·0.0339357649 + 0.05·0 = 0.0237550354
    assert final_transform(0.0) == pytest.approx(0.0237550354, abs=1e-9)


def test_final_transform_at_half():
    # sigmoid(0) = 0.5; 0.5^0.75 = 2^−0.75 = 0.5946035575; 0.7·0.5946035575 = 0.4162224903; + 0.05·0.5 = 0.025
    # → 0.4412224903
    assert final_transform(0.5) == pytest.approx(0.7 * 0.5**0.75 + 0.025, abs=1e-15)
    assert final_transform(0.5) == pytest.approx(0.4412224903, abs=1e-9)


def test_final_transform_at_one():
    # sigmoid(4.5) = 1/(1 + e^−4.5) = 1/1.0111089965 = 0.9890130574
    # ^0.75 = exp(0.75·ln 0.9890130574) = exp(0.75·(−0.0110477)) = exp(−0.0082858) = 0.9917484
    # 0.7·0.9917484 = 0.6942239; + 0.05 = 0.7442239
    assert final_transform(1.0) == pytest.approx(0.7442239, abs=1e-7)


def test_final_scores_zero_for_non_positive_and_all_zero():
    # max 0.8 → x = 1 for the best, 0.5 for 0.4; 0 and negative get 0 (not the x = 0 floor 0.02376)
    assert final_scores([0.8, 0.4, 0.0, -0.1]) == pytest.approx([0.7442239, 0.4412225, 0.0, 0.0], abs=1e-7)
    assert final_scores([0.0, 0.0]) == [0.0, 0.0]
    assert final_scores([]) == []


# --------------------------------------------------------------------------- replay & digest


def test_to_scored_task_carries_adjusted_scores():
    result = score_task(TaskInfo("t", 8.0, 2.0, NOW - 60), [ok("a", 1.0), ok("b", 2.0), failed("c")])
    rec = result.to_scored_task()
    # W = 8: a 3·8 = 24, b −1·8 = −8 (rank 2 > 1.5), c failed −8
    assert rec.adjusted == (("a", 24.0), ("b", -8.0), ("c", -8.0)) and rec.completed_at == NOW - 60
    assert replay([rec], NOW).final_by_hotkey() == pytest.approx({"a": 0.7442239, "b": 0.0, "c": 0.0}, abs=1e-7)


def test_redelivered_record_counts_once_and_conflicts_are_errors():
    recs = _example_records()
    assert replay(recs + [recs[0]], NOW) == replay(recs, NOW)
    with pytest.raises(ValueError, match="t1"):
        replay(recs + [ScoredTask("t1", NOW - 0.5 * D, {"A": 0.0})], NOW)


def test_digest_changes_with_config_and_now_only():
    base = replay(_example_records(), NOW)
    assert base.digest == replay(_example_records(), NOW).digest
    assert replay(_example_records(), NOW + 1).digest != base.digest
    assert replay(_example_records(), NOW, ScoringConfig(version="other")).digest != base.digest
    assert base.digest == compute_weights_digest(base.hotkeys, base.temporal, base.final, NOW, CFG)


def test_pruning_records_older_than_the_longest_window_keeps_the_digest():
    recs = _example_records()
    assert replay(recs[:3], NOW).digest == replay(recs, NOW).digest


def test_explain_miner():
    table = build_score_table(_example_records())
    e = explain_miner(table, "A", NOW)
    assert [w.window for w in e.windows] == ["1d", "3d", "7d"]
    # tasks in canonical (oldest first) order
    assert e.windows[2].tasks == (("t3", -1.0), ("t2", 0.0), ("t1", 3.0))
    assert e.windows[1].raw_sum == 3.0 and e.windows[1].normalised == 0.5
    assert e.final == pytest.approx(0.7166175, abs=1e-7)
    with pytest.raises(KeyError):
        explain_miner(table, "D", NOW)


_record_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=9 * DAY_S, allow_nan=False),  # age
        st.dictionaries(
            st.sampled_from([f"m{i}" for i in range(8)]),
            st.floats(min_value=-60, max_value=160, allow_nan=False, allow_infinity=False),
            max_size=8,
        ),
    ),
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(_record_strategy, st.randoms(use_true_random=False))
def test_replay_does_not_depend_on_event_order(rows, rnd):
    records = [ScoredTask(f"task{i}", NOW - age, scores) for i, (age, scores) in enumerate(rows)]
    shuffled = records + records[: len(records) // 2]  # redeliveries too
    rnd.shuffle(shuffled)
    a, b = replay(records, NOW), replay(shuffled, NOW)
    assert a == b  # bit-for-bit: floats compared exactly, digest included
    assert all(0.0 <= v <= 1.0 for v in a.temporal)
    if a.final:
        assert all(v == 0.0 or 0.0237 < v <= 0.7442239 for v in a.final)


def test_temporal_weights_sum_to_one_for_a_miner_best_everywhere():
    # best in every window → 0.3 + 0.3 + 0.4 = 1.0 (tasks at 0.5 d, 2 d, 5 d)
    recs = [ScoredTask(f"t{i}", NOW - age * D, {"best": 3.0, "other": 0.0}) for i, age in enumerate((0.5, 2, 5))]
    r = replay(recs, NOW)
    assert r.temporal_by_hotkey() == {"best": pytest.approx(1.0, abs=1e-15), "other": 0.0}
    assert math.isclose(r.final_by_hotkey()["best"], 0.7442239, abs_tol=1e-7)
