"""Pure scoring (paper §3.4.1, §3.5; SPEC step 7): one task's scores, then the temporal
aggregation and final transform over the event log.

Per task (`score_task`):
  1. failed submissions (evaluation said not valid) → `failed_submission_score`;
  2. duplicates (eq 9): |ΔL_test| < ε and |ΔL_synth| < ε → only the earliest upload is credited,
     later ones are treated as failed with reason "duplicate of …";
  3. suspicious (eq 10): L_synth > L_test + α·σ(L_test) → flagged only;
  4. rank the credited submissions by L_weighted (lower is better) and score them (eq 11);
  5. beyond the paper: paired-bootstrap confidence that rank 1 beats rank 2;
  6. S_adjusted = S_task · W_task (eq 12).
Over tasks (`replay`): per-window sums, each normalised by its best miner (eq 13), then the
sigmoid transform (eqs 14–15), and a sha256 digest an auditor can compare bit for bit.

Determinism: results never depend on the order events arrived in. Tasks are summed in the
canonical order (completed_at, task_id) with np.bincount (a plain sequential loop, no SIMD
reassociation), and the final transform uses libm (math.exp/pow) per miner rather than numpy's
vectorised exp, whose SIMD kernels may differ by an ULP between CPUs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import numpy as np

from services.scorer.scoring_config import DEFAULT_SCORING_CONFIG, ScoringConfig

# --------------------------------------------------------------------------- inputs


def _check_finite(owner: str, name: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class SubmissionResult:
    """What the eval worker reports for one miner's submission to one task.

    l_weighted: the ranking loss, lower is better. Text: ω·L_test + (1−ω)·L_synth; image:
      δ·L_text + (1−δ)·L_no-text (the worker then passes L_text as l_test, L_no-text as l_synth);
      GRPO: the worker passes loss = −reward, so lower is still better.
    l_synth: None when the task has no synthetic split score for this submission.
    upload_time / upload_seq: when the upload was received (unix seconds) and the store's
      monotonic upload sequence; together they decide "earliest" (eq 9) and break exact ties.
    per_example_test / per_example_synth: per-example losses on the same examples, in the same
      order, for every submission of the task (used by the paired bootstrap; may be empty).
    """

    miner_hotkey: str
    valid: bool
    fail_reason: str = ""
    l_test: float | None = None
    l_synth: float | None = None
    l_weighted: float | None = None
    upload_time: float = 0.0
    upload_seq: int = 0
    per_example_test: tuple[float, ...] = ()
    per_example_synth: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        owner = "SubmissionResult"
        if not isinstance(self.miner_hotkey, str) or not self.miner_hotkey:
            raise ValueError(f"{owner}.miner_hotkey must be a non-empty string, got {self.miner_hotkey!r}")
        if not isinstance(self.valid, bool):
            raise ValueError(f"{owner}.valid must be a bool, got {self.valid!r}")
        _check_finite(owner, "upload_time", self.upload_time)
        if isinstance(self.upload_seq, bool) or not isinstance(self.upload_seq, int):
            raise ValueError(f"{owner}.upload_seq must be an int, got {self.upload_seq!r}")
        for name in ("per_example_test", "per_example_synth"):
            values = tuple(float(v) for v in getattr(self, name))
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{owner}.{name} must hold finite numbers ({self.miner_hotkey})")
            object.__setattr__(self, name, values)
        if self.valid:
            # A valid submission is ranked, so its losses must be usable numbers.
            _check_finite(owner, "l_test", self.l_test)
            _check_finite(owner, "l_weighted", self.l_weighted)
            _check_finite(owner, "l_synth", self.l_synth, optional=True)

    @property
    def upload_order(self) -> tuple[float, int, str]:
        # hotkey last: a total order even when time and sequence coincide.
        return (self.upload_time, self.upload_seq, self.miner_hotkey)


@dataclass(frozen=True)
class TaskInfo:
    """The task facts scoring needs.

    model_params_billions: φ(M), base model size in billions of parameters (eq 12).
    hours: t, training time allotted in hours (eq 12).
    completed_at: unix seconds; places the task in the temporal windows (eq 13).
    loss_test_weight: weight of l_test when the bootstrap rebuilds L_weighted from per-example
      losses (ω for text, δ for image, 1.0 when ranking on l_test alone); None → config ω.
    """

    task_id: str
    model_params_billions: float
    hours: float
    completed_at: float
    loss_test_weight: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError(f"TaskInfo.task_id must be a non-empty string, got {self.task_id!r}")
        for name in ("model_params_billions", "hours"):
            value = getattr(self, name)
            _check_finite("TaskInfo", name, value)
            if value < 0:
                raise ValueError(f"TaskInfo.{name} must be >= 0, got {value!r}")
        _check_finite("TaskInfo", "completed_at", self.completed_at)
        w = self.loss_test_weight
        if w is not None:
            _check_finite("TaskInfo", "loss_test_weight", w)
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"TaskInfo.loss_test_weight must be in [0, 1], got {w!r}")


# --------------------------------------------------------------------------- loss helpers


def weighted_text_loss(l_test: float, l_synth: float, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> float:
    """§3.4: L_weighted = ω·L_test + (1−ω)·L_synth (ω = 0.7)."""
    return config.test_weight_omega * l_test + (1.0 - config.test_weight_omega) * l_synth


def weighted_image_loss(l_text: float, l_no_text: float, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> float:
    """§3.4: L_weighted = δ·L_text + (1−δ)·L_no-text (δ = 0.25)."""
    return config.image_text_weight_delta * l_text + (1.0 - config.image_text_weight_delta) * l_no_text


# --------------------------------------------------------------------------- eq 9, eq 10


def find_duplicates(results: Sequence[SubmissionResult], epsilon: float) -> dict[str, str]:
    """Eq 9 over valid submissions: {later hotkey: hotkey of the earliest upload it matches}.

    A submission is a duplicate when it lies within ε (strictly, on L_test and on L_synth) of ANY
    earlier upload, credited or not: a copy of a copy is still a copy. Missing L_synth matches
    only missing L_synth. ε = 0 turns the check off.
    """
    valid = sorted((r for r in results if r.valid), key=lambda r: r.upload_order)
    n = len(valid)
    if n < 2 or epsilon <= 0:
        return {}
    test = np.array([r.l_test for r in valid], dtype=np.float64)
    synth = np.array([np.nan if r.l_synth is None else r.l_synth for r in valid], dtype=np.float64)
    close_test = np.abs(test[:, None] - test[None, :]) < epsilon
    synth_missing = np.isnan(synth)
    with np.errstate(invalid="ignore"):
        close_synth = np.abs(synth[:, None] - synth[None, :]) < epsilon
    close_synth |= synth_missing[:, None] & synth_missing[None, :]
    # Only earlier uploads (column j < row i) can be the original.
    match = close_test & close_synth & np.tri(n, n, -1, dtype=bool)
    duplicates: dict[str, str] = {}
    for i in np.flatnonzero(match.any(axis=1)):
        duplicates[valid[i].miner_hotkey] = valid[int(np.argmax(match[i]))].miner_hotkey
    return duplicates


def eq10_sigma(l_test: Sequence[float]) -> float | None:
    """σ(L_test) of eq 10: the POPULATION standard deviation (ddof = 0, as np.std).

    None with fewer than two losses: the spread of one submission is undefined (np.std would
    say 0, which would flag any single submission whose L_synth exceeds its L_test).
    """
    if len(l_test) < 2:
        return None
    return float(np.std(np.asarray(l_test, dtype=np.float64)))


def suspicious_flags(l_test: Sequence[float], l_synth: Sequence[float | None], alpha: float) -> list[bool]:
    """Eq 10: L_synth > L_test + α·σ(L_test).

    σ is `eq10_sigma` of L_test over the credited submissions of the task (valid, not
    duplicates): the set that is ranked. With fewer than two of them σ is undefined and nothing
    is flagged. A missing L_synth is never suspicious. This only flags: the reference validator
    flags such models and does not zero their score, and neither do we.
    """
    if len(l_test) != len(l_synth):
        raise ValueError(f"l_test and l_synth must have equal length, got {len(l_test)} and {len(l_synth)}")
    sigma = eq10_sigma(l_test)
    if sigma is None:
        return [False] * len(l_test)
    return [s is not None and s > t + alpha * sigma for t, s in zip(l_test, l_synth)]


# --------------------------------------------------------------------------- eq 11, eq 12


def task_score_for_rank(rank: int, n_valid: int, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> float:
    """Eq 11: rank 1 → S_first; rank > |M_valid|·(1 − ρ_penalty) → S_penalty; else 0.

    Rank 1 wins over the penalty clause (a single valid miner gets S_first). The threshold is
    compared exactly, in decimal terms of ρ (Fraction of its repr), so ρ = 0.1 and n = 10
    penalises rank 10 only, not rank 9 through a binary rounding of 0.9.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= n_valid:
        raise ValueError(f"rank must be an int in [1, n_valid={n_valid}], got {rank!r}")
    if rank == 1:
        return config.first_place_score
    threshold = n_valid * (1 - Fraction(repr(config.penalty_fraction)))
    if rank > threshold:
        return config.penalty_score
    return 0.0


def task_weight(model_params_billions: float, hours: float, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> float:
    """Eq 12: W_task = max(1, 2·sqrt(φ·t)), φ in billions of parameters, t in hours."""
    _check_finite("task_weight", "model_params_billions", model_params_billions)
    _check_finite("task_weight", "hours", hours)
    if model_params_billions < 0 or hours < 0:
        raise ValueError(f"model_params_billions and hours must be >= 0, got {model_params_billions!r}, {hours!r}")
    return max(config.task_weight_floor, config.task_weight_scale * math.sqrt(model_params_billions * hours))


# --------------------------------------------------------------------------- bootstrap (beyond)


def _bootstrap_mean_diffs(diff: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, diff.shape[0], size=(samples, diff.shape[0]))
    return cast(np.ndarray, diff[idx].mean(axis=1))


def paired_bootstrap_confidence(
    first_test: Sequence[float],
    second_test: Sequence[float],
    first_synth: Sequence[float] = (),
    second_synth: Sequence[float] = (),
    *,
    test_weight: float = 1.0,
    samples: int = 1000,
    seed: int | Sequence[int] = 0,
) -> float:
    """P(rank 1 truly beats rank 2), from per-example losses on the same examples.

    Resamples examples with replacement (test and synth independently, pairs kept together) and
    recomputes Δ = w·mean(second−first)_test + (1−w)·mean(second−first)_synth; the confidence is
    the fraction of resamples with Δ > 0 (rank 1's loss lower), exact ties counting half.
    Synth is used only when both synth lists are non-empty.
    """
    a, b = np.asarray(first_test, dtype=np.float64), np.asarray(second_test, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"per-example test losses must be non-empty and of equal length, got {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    stat = _bootstrap_mean_diffs(b - a, samples, rng)
    if len(first_synth) or len(second_synth):
        sa, sb = np.asarray(first_synth, dtype=np.float64), np.asarray(second_synth, dtype=np.float64)
        if sa.shape != sb.shape or sa.size == 0:
            raise ValueError(f"per-example synth losses must be of equal length, got {sa.size} and {sb.size}")
        stat = test_weight * stat + (1.0 - test_weight) * _bootstrap_mean_diffs(sb - sa, samples, rng)
    return float(np.mean(stat > 0) + 0.5 * np.mean(stat == 0))


def _task_seed(config: ScoringConfig, task_id: str) -> list[int]:
    # Same config + same task → same draws on any machine; different tasks draw independently.
    task_part = int.from_bytes(hashlib.sha256(task_id.encode("utf-8")).digest()[:8], "big")
    return [config.bootstrap_seed, task_part]


def _rank1_confidence(
    first: SubmissionResult, second: SubmissionResult, task: TaskInfo, config: ScoringConfig
) -> float | None:
    """None when the two lack comparable per-example losses (then eq 11 applies unchanged).

    (score_task does not call it with fewer than two credited submissions: then the confidence
    is None too, never NaN; TaskScored and TaskResult leave their optional field unset.)
    """
    if not first.per_example_test or len(first.per_example_test) != len(second.per_example_test):
        return None
    use_synth = bool(first.per_example_synth) and len(first.per_example_synth) == len(second.per_example_synth)
    w = config.test_weight_omega if task.loss_test_weight is None else task.loss_test_weight
    return paired_bootstrap_confidence(
        first.per_example_test,
        second.per_example_test,
        first.per_example_synth if use_synth else (),
        second.per_example_synth if use_synth else (),
        test_weight=w if use_synth else 1.0,
        samples=config.bootstrap_samples,
        seed=_task_seed(config, task.task_id),
    )


# --------------------------------------------------------------------------- one task


@dataclass(frozen=True)
class MinerTaskScore:
    """One miner's line in a task's result (mirrors gradients.v1.Score).

    rank: 1-based among credited submissions; 0 for failed and duplicate submissions.
    """

    miner_hotkey: str
    rank: int
    task_score: float
    adjusted: float
    duplicate: bool
    suspicious: bool
    reason: str


@dataclass(frozen=True)
class ScoredTask:
    """The record the temporal aggregation needs from one scored task (what the event log keeps).

    adjusted: (hotkey, S_adjusted) pairs, stored sorted by hotkey so equal tasks compare equal.
    """

    task_id: str
    completed_at: float
    adjusted: tuple[tuple[str, float], ...]

    def __init__(self, task_id: str, completed_at: float, adjusted: Mapping[str, float] | Iterable[tuple[str, float]]):
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"ScoredTask.task_id must be a non-empty string, got {task_id!r}")
        _check_finite("ScoredTask", "completed_at", completed_at)
        pairs = list(adjusted.items()) if isinstance(adjusted, Mapping) else list(adjusted)
        hotkeys = [hk for hk, _ in pairs]
        if len(set(hotkeys)) != len(hotkeys):
            raise ValueError(f"ScoredTask.adjusted of task {task_id} names a hotkey twice")
        for hk, value in pairs:
            if not isinstance(hk, str) or not hk:
                raise ValueError(f"ScoredTask.adjusted of task {task_id} has a bad hotkey {hk!r}")
            _check_finite("ScoredTask", f"adjusted[{hk}]", value)
        object.__setattr__(self, "task_id", task_id)
        object.__setattr__(self, "completed_at", float(completed_at))
        object.__setattr__(self, "adjusted", tuple(sorted((hk, float(v)) for hk, v in pairs)))


@dataclass(frozen=True)
class TaskScoreResult:
    task_id: str
    completed_at: float
    task_weight: float
    rank1_confidence: float | None  # None: fewer than two credited, or no comparable per-example losses
    config_version: str
    miners: tuple[MinerTaskScore, ...]  # credited by rank, then failed/duplicates by hotkey

    def by_hotkey(self) -> dict[str, MinerTaskScore]:
        return {m.miner_hotkey: m for m in self.miners}

    def to_scored_task(self) -> ScoredTask:
        return ScoredTask(self.task_id, self.completed_at, {m.miner_hotkey: m.adjusted for m in self.miners})


def score_task(
    task: TaskInfo, results: Sequence[SubmissionResult], config: ScoringConfig = DEFAULT_SCORING_CONFIG
) -> TaskScoreResult:
    """Score one task's submissions (eqs 9–12). Does not depend on the order of `results`.

    Ties: equal L_weighted → the earlier upload (upload_time, then upload_seq, then hotkey)
    ranks first; exact equality only, near-equal values are ordered by value.
    Failed and duplicate submissions get `failed_submission_score` (−1) when at least one
    submission is credited; when none is, every miner gets 0 (nobody to compare against).
    With min_confidence_for_first set and the bootstrap confidence below it, first place is
    withheld: ranks 1 and 2 both get 0 (the evaluation cannot tell them apart, so neither is
    rewarded nor penalised); the other ranks keep their eq 11 scores.
    """
    hotkeys = [r.miner_hotkey for r in results]
    if len(set(hotkeys)) != len(hotkeys):
        seen: set[str] = set()
        # `seen.add` returns None: the `or` records the hotkey and keeps the first occurrence out.
        twice = sorted({hk for hk in hotkeys if hk in seen or seen.add(hk)})  # type: ignore[func-returns-value]
        raise ValueError(f"results of task {task.task_id} name a miner twice: {twice}")

    duplicates = find_duplicates(results, config.duplicate_epsilon)
    credited = [r for r in results if r.valid and r.miner_hotkey not in duplicates]
    credited.sort(key=lambda r: (r.l_weighted, *r.upload_order))
    n = len(credited)
    # Credited submissions are valid, so __post_init__ checked their l_test is a finite number.
    flags = suspicious_flags(
        [cast(float, r.l_test) for r in credited], [r.l_synth for r in credited], config.suspicious_alpha
    )

    confidence = _rank1_confidence(credited[0], credited[1], task, config) if n >= 2 else None
    withhold_first = (
        config.min_confidence_for_first is not None
        and confidence is not None
        and confidence < config.min_confidence_for_first
    )
    w_task = task_weight(task.model_params_billions, task.hours, config)

    lines: list[MinerTaskScore] = []
    for rank, (r, flag) in enumerate(zip(credited, flags), start=1):
        s = task_score_for_rank(rank, n, config)
        reason = "first place" if rank == 1 else ("bottom penalty" if s == config.penalty_score else "ranked")
        if withhold_first and rank <= 2:
            s = 0.0
            reason = f"first place withheld: rank-1 confidence {confidence:.4f} < {config.min_confidence_for_first}"
        if flag:
            reason += "; suspicious: L_synth > L_test + α·σ(L_test)"
        lines.append(MinerTaskScore(r.miner_hotkey, rank, s, s * w_task, False, flag, reason))

    fail_score = config.failed_submission_score if n > 0 else 0.0
    credited_hotkeys = {r.miner_hotkey for r in credited}
    for r in sorted((r for r in results if r.miner_hotkey not in credited_hotkeys), key=lambda r: r.miner_hotkey):
        if r.miner_hotkey in duplicates:
            reason, dup = f"duplicate of {duplicates[r.miner_hotkey]} (eq 9)", True
        else:
            reason, dup = f"failed: {r.fail_reason or 'evaluation failed'}", False
        lines.append(MinerTaskScore(r.miner_hotkey, 0, fail_score, fail_score * w_task, dup, False, reason))

    return TaskScoreResult(task.task_id, float(task.completed_at), w_task, confidence, config.version, tuple(lines))


# --------------------------------------------------------------------------- eqs 13–15 over the log


@dataclass(frozen=True, eq=False)
class ScoreTable:
    """Columnar form of the scored tasks, in canonical order, ready for vectorised recompute.

    Tasks are sorted by (completed_at, task_id); rows are task-major, one per (task, miner),
    so every window is one contiguous slice of rows.
    """

    hotkeys: tuple[str, ...]  # sorted; miner column index
    task_ids: tuple[str, ...]
    task_times: np.ndarray  # float64[T], ascending
    row_start: np.ndarray  # int64[T+1]: rows of task k are row_start[k]:row_start[k+1]
    row_task: np.ndarray  # int64[R]
    row_miner: np.ndarray  # int64[R]
    row_score: np.ndarray  # float64[R], S_adjusted


def build_score_table(records: Iterable[ScoredTask]) -> ScoreTable:
    """Deduplicate by task_id (a redelivered identical record counts once; two different records
    for one task are an error) and lay the tasks out canonically."""
    by_id: dict[str, ScoredTask] = {}
    for rec in records:
        prev = by_id.setdefault(rec.task_id, rec)
        if prev is not rec and prev != rec:
            raise ValueError(f"two different scored records for task {rec.task_id}")
    tasks = sorted(by_id.values(), key=lambda r: (r.completed_at, r.task_id))
    hotkeys = tuple(sorted({hk for r in tasks for hk, _ in r.adjusted}))
    index = {hk: i for i, hk in enumerate(hotkeys)}
    counts = np.fromiter((len(r.adjusted) for r in tasks), dtype=np.int64, count=len(tasks))
    row_start = np.zeros(len(tasks) + 1, dtype=np.int64)
    np.cumsum(counts, out=row_start[1:])
    n_rows = int(row_start[-1])
    return ScoreTable(
        hotkeys=hotkeys,
        task_ids=tuple(r.task_id for r in tasks),
        task_times=np.fromiter((r.completed_at for r in tasks), dtype=np.float64, count=len(tasks)),
        row_start=row_start,
        row_task=np.repeat(np.arange(len(tasks), dtype=np.int64), counts),
        row_miner=np.fromiter((index[hk] for r in tasks for hk, _ in r.adjusted), dtype=np.int64, count=n_rows),
        row_score=np.fromiter((v for r in tasks for _, v in r.adjusted), dtype=np.float64, count=n_rows),
    )


def window_task_range(task_times: np.ndarray, now: float, window_s: float, inclusive: bool) -> tuple[int, int]:
    """Index range [lo, hi) of the (ascending) tasks inside the window ending at `now`.

    Inside means now − window ≤ completed_at ≤ now (inclusive edge) or now − window <
    completed_at ≤ now (exclusive, as the reference's `created_at > cutoff`). Tasks completed
    after `now` are not counted: a replay "as of now" ignores the future.
    """
    cutoff = now - window_s
    lo = int(np.searchsorted(task_times, cutoff, side="left" if inclusive else "right"))
    hi = int(np.searchsorted(task_times, now, side="right"))
    return lo, max(lo, hi)


def normalise_window(sums: np.ndarray) -> np.ndarray:
    """Eq 13's Normalize: divide by the best (max) sum so the best miner gets 1; a sum ≤ 0
    gives 0; when no sum is positive every miner gets 0.

    This follows the reference validator, rayonlabs/G.O.D validator/evaluation/scoring.py
    `_normalise_scores`: `max_score = max(valid_scores)`; `if max_score <= 0`: all 0; a
    `quality_score <= 0` → 0; else `quality_score / max_score`. (The reference then applies the
    sigmoid inside each window and weights the windows afterwards; the paper, followed here,
    weights the normalised windows (eq 13) and applies the sigmoid once (eqs 14–15). Nor do we
    copy the reference's multiplication of the summed score by the miner's average raw score,
    which the paper does not have.)
    """
    top = float(sums.max()) if sums.size else 0.0
    if top <= 0:
        return np.zeros_like(sums)
    return np.where(sums > 0, sums / top, 0.0)


def final_transform(x: float, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> float:
    """Eqs 14–15: β·sigmoid(γ·(x − μ))^ν + ω·x, with libm exp/pow (see module docstring)."""
    sigmoid = 1.0 / (1.0 + math.exp(-config.sigmoid_steepness_gamma * (x - config.sigmoid_shift_mu)))
    return cast(float, config.sigmoid_weight_beta * sigmoid**config.sigmoid_power_nu + config.linear_weight * x)


def final_scores(temporal: Sequence[float] | np.ndarray, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> list[float]:
    """x_i = S_temporal_i / max; S_final = final_transform(x_i).

    When no temporal score is positive every miner gets 0. A miner whose temporal score is ≤ 0
    gets 0 rather than the transform's floor at x = 0 (≈ 0.0238), as in the reference's
    `_normalise_scores` (`quality_score <= 0` → 0): a miner with nothing to its credit earns
    nothing.
    """
    values = [float(t) for t in temporal]
    top = max(values, default=0.0)
    if top <= 0:
        return [0.0] * len(values)
    return [final_transform(t / top, config) if t > 0 else 0.0 for t in values]


@dataclass(frozen=True)
class WeightsReplay:
    """Result of a full recompute as of `now`. Miners listed are those with at least one task
    inside the longest window (so pruning older records never changes the result)."""

    now: float
    config_version: str
    config_digest: str
    window_names: tuple[str, ...]
    hotkeys: tuple[str, ...]  # sorted
    window_sums: tuple[tuple[float, ...], ...]  # [window][miner], raw Σ S_adjusted
    window_normalised: tuple[tuple[float, ...], ...]  # [window][miner]
    temporal: tuple[float, ...]  # eq 13
    final: tuple[float, ...]  # eqs 14–15
    digest: str

    def final_by_hotkey(self) -> dict[str, float]:
        return dict(zip(self.hotkeys, self.final))

    def temporal_by_hotkey(self) -> dict[str, float]:
        return dict(zip(self.hotkeys, self.temporal))


def compute_weights_digest(
    hotkeys: Sequence[str], temporal: Sequence[float], final: Sequence[float], now: float, config: ScoringConfig
) -> str:
    """sha256 over canonical JSON: config digest, `now`, and (hotkey, temporal, final) sorted by
    hotkey. Floats are written by repr (shortest exact round-trip), so equal bits ⇔ equal text."""
    if not len(hotkeys) == len(temporal) == len(final):
        raise ValueError("hotkeys, temporal and final must have equal length")
    rows = sorted(zip(hotkeys, (float(t) for t in temporal), (float(f) for f in final)))
    body = {"config_digest": config.digest(), "config_version": config.version, "now": float(now), "scores": rows}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recompute(table: ScoreTable, now: float, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> WeightsReplay:
    """Eqs 13–15 over every scored task, vectorised: one bincount per window."""
    _check_finite("recompute", "now", now)
    m = len(table.hotkeys)
    sums_by_window: list[np.ndarray] = []
    norm_by_window: list[np.ndarray] = []
    temporal = np.zeros(m, dtype=np.float64)
    for window_s, weight in zip(config.window_seconds, config.window_weights):
        lo, hi = window_task_range(table.task_times, now, window_s, config.window_edge_inclusive)
        r0, r1 = int(table.row_start[lo]), int(table.row_start[hi])
        sums = np.bincount(table.row_miner[r0:r1], weights=table.row_score[r0:r1], minlength=m)
        norm = normalise_window(sums)
        temporal = temporal + weight * norm  # fixed window order: same adds everywhere
        sums_by_window.append(sums)
        norm_by_window.append(norm)
    lo, hi = window_task_range(table.task_times, now, max(config.window_seconds), config.window_edge_inclusive)
    present = np.zeros(m, dtype=bool)
    present[table.row_miner[int(table.row_start[lo]) : int(table.row_start[hi])]] = True
    keep = np.flatnonzero(present)

    hotkeys = tuple(table.hotkeys[i] for i in keep)
    temporal_kept = [float(v) for v in temporal[keep]]
    final = final_scores(temporal_kept, config)
    return WeightsReplay(
        now=float(now),
        config_version=config.version,
        config_digest=config.digest(),
        window_names=config.window_names,
        hotkeys=hotkeys,
        window_sums=tuple(tuple(float(v) for v in s[keep]) for s in sums_by_window),
        window_normalised=tuple(tuple(float(v) for v in s[keep]) for s in norm_by_window),
        temporal=tuple(temporal_kept),
        final=tuple(final),
        digest=compute_weights_digest(hotkeys, temporal_kept, final, now, config),
    )


def replay(records: Iterable[ScoredTask], now: float, config: ScoringConfig = DEFAULT_SCORING_CONFIG) -> WeightsReplay:
    """Auditor entry point: scored-task records (any order, redeliveries allowed) → S_final + digest."""
    return recompute(build_score_table(records), now, config)


# --------------------------------------------------------------------------- explanation


@dataclass(frozen=True)
class WindowExplanation:
    window: str
    weight: float
    raw_sum: float
    normalised: float
    tasks: tuple[tuple[str, float], ...]  # (task_id, S_adjusted), canonical task order


@dataclass(frozen=True)
class MinerExplanation:
    miner_hotkey: str
    windows: tuple[WindowExplanation, ...]
    temporal: float
    final: float


def explain_miner(
    table: ScoreTable, hotkey: str, now: float, config: ScoringConfig = DEFAULT_SCORING_CONFIG
) -> MinerExplanation:
    """Per-window contributions behind one miner's score (for Scorer.ExplainMinerScore)."""
    result = recompute(table, now, config)
    if hotkey not in result.hotkeys:
        raise KeyError(f"miner {hotkey} has no task in the last {max(config.window_days):g} days")
    col = result.hotkeys.index(hotkey)
    miner_idx = table.hotkeys.index(hotkey)
    windows = []
    for w, (window_s, weight) in enumerate(zip(config.window_seconds, config.window_weights)):
        lo, hi = window_task_range(table.task_times, now, window_s, config.window_edge_inclusive)
        r0, r1 = int(table.row_start[lo]), int(table.row_start[hi])
        rows = r0 + np.flatnonzero(table.row_miner[r0:r1] == miner_idx)
        tasks = tuple((table.task_ids[int(table.row_task[r])], float(table.row_score[r])) for r in rows)
        windows.append(
            WindowExplanation(
                config.window_names[w], weight, result.window_sums[w][col], result.window_normalised[w][col], tasks
            )
        )
    return MinerExplanation(hotkey, tuple(windows), result.temporal[col], result.final[col])


__all__ = [
    "MinerExplanation",
    "MinerTaskScore",
    "ScoreTable",
    "ScoredTask",
    "SubmissionResult",
    "TaskInfo",
    "TaskScoreResult",
    "WeightsReplay",
    "WindowExplanation",
    "build_score_table",
    "compute_weights_digest",
    "eq10_sigma",
    "explain_miner",
    "final_scores",
    "final_transform",
    "find_duplicates",
    "normalise_window",
    "paired_bootstrap_confidence",
    "recompute",
    "replay",
    "score_task",
    "suspicious_flags",
    "task_score_for_rank",
    "task_weight",
    "weighted_image_loss",
    "weighted_text_loss",
]
