"""Miner pool selection (paper §3.2 eq 2, §3.7 pool sizes; SPEC step 4).

1. weight w_i = α (2.0) if miner i has not taken part today, else max(s_i, γ) (γ = 0.01);
2. rank by weight, highest first;
3. position weight p_i = λ − (i−1)(λ−1)/|M| (eq 2, λ = 3.0) — the rank-1 miner is λ times
   as likely to be drawn first as a (hypothetical) rank-|M|+1 miner;
4. draw the pool without replacement, each draw proportional to p_i of those left.

Pure logic: plain dataclasses in, plain lists out; randomness from a caller's `random.Random`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gradients.task_types import TaskType

DEFAULT_ALPHA = 2.0  # weight of a miner that has not taken part today
DEFAULT_GAMMA = 0.01  # weight floor, so every miner keeps some chance
DEFAULT_LAMBDA = 3.0  # top miner chance multiplier of eq 2


@dataclass(frozen=True)
class MinerStanding:
    """What the selector knows about one available miner.

    avg_quality_score: average quality score s_i from previous tasks; None when the miner
    has none yet.
    """

    hotkey: str
    uid: int
    took_part_today: bool
    avg_quality_score: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hotkey, str) or not self.hotkey:
            raise ValueError(f"MinerStanding.hotkey must be a non-empty string, got {self.hotkey!r}")
        if isinstance(self.uid, bool) or not isinstance(self.uid, int) or self.uid < 0:
            raise ValueError(f"MinerStanding.uid must be an int >= 0, got {self.uid!r}")
        s = self.avg_quality_score
        if s is not None and (not isinstance(s, (int, float)) or not math.isfinite(s)):
            raise ValueError(f"MinerStanding.avg_quality_score must be finite or None, got {s!r}")


def _check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def selection_weight(standing: MinerStanding, alpha: float = DEFAULT_ALPHA, gamma: float = DEFAULT_GAMMA) -> float:
    """w_i = α if the miner has not taken part today, else max(s_i, γ).

    A miner that took part today but has no score yet (its task is not scored) gets γ,
    as the reference validator's fallback does: taking part ends the first-of-the-day bonus.
    """
    _check_positive("alpha", alpha)
    _check_positive("gamma", gamma)
    if not standing.took_part_today:
        return alpha
    if standing.avg_quality_score is None:
        return gamma
    return max(standing.avg_quality_score, gamma)


def _check_lambda(lam: float) -> None:
    # λ < 1 would favour the bottom of the ranking, the opposite of eq 2's intent.
    if not math.isfinite(lam) or lam < 1:
        raise ValueError(f"lam must be finite and >= 1, got {lam!r}")


def position_probabilities(n: int, lam: float = DEFAULT_LAMBDA) -> list[float]:
    """Relative p_i = λ − (i−1)(λ−1)/n for ranks i = 1..n (eq 2). All are > 1 when λ > 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    _check_lambda(lam)
    return [lam - i * (lam - 1) / n for i in range(n)]


def normalised_position_probabilities(n: int, lam: float = DEFAULT_LAMBDA) -> list[float]:
    """eq 2 scaled to sum to 1: the probability that rank i is the FIRST miner drawn."""
    relative = position_probabilities(n, lam)
    total = math.fsum(relative)
    return [p / total for p in relative]


def rank_miners(
    standings: Iterable[MinerStanding],
    alpha: float = DEFAULT_ALPHA,
    gamma: float = DEFAULT_GAMMA,
    tie_break_salt: str | None = None,
) -> list[MinerStanding]:
    """Miners sorted by selection weight, highest first.

    Ties (common: every miner new today has weight α) are broken deterministically so the
    ranking does not depend on the order the caller listed the miners in:
    - tie_break_salt None: by hotkey, ascending (plain string order);
    - tie_break_salt given (e.g. the task id): by sha256(salt + ":" + hotkey), then hotkey.
      Still deterministic and replayable, but the order among tied miners changes from task
      to task, so no hotkey gets a permanently better position weight p_i.
    """
    miners = list(standings)
    seen: set[str] = set()
    for m in miners:
        if m.hotkey in seen:
            raise ValueError(f"duplicate hotkey in standings: {m.hotkey!r}")
        seen.add(m.hotkey)

    def key(m: MinerStanding) -> tuple[float, str, str]:
        salted = "" if tie_break_salt is None else hashlib.sha256(f"{tie_break_salt}:{m.hotkey}".encode()).hexdigest()
        return (-selection_weight(m, alpha, gamma), salted, m.hotkey)

    return sorted(miners, key=key)


def weighted_draw_without_replacement(weights: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """Indices of k draws, in draw order; each draw ∝ the weights of the indices not yet drawn.

    Consumes exactly one `rng.random()` per draw. k larger than len(weights) draws them all.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w <= 0:
            raise ValueError(f"weights[{i}] must be finite and > 0, got {w!r}")
    remaining = list(range(len(weights)))
    drawn: list[int] = []
    for _ in range(min(k, len(remaining))):
        total = math.fsum(weights[i] for i in remaining)
        target = rng.random() * total
        chosen_at = len(remaining) - 1  # if round-off leaves target >= the running sum
        running = 0.0
        for j, idx in enumerate(remaining):
            running += weights[idx]
            if target < running:
                chosen_at = j
                break
        drawn.append(remaining.pop(chosen_at))
    return drawn


def select_pool(
    standings: Iterable[MinerStanding],
    pool_size: int,
    rng: random.Random,
    exclude: Iterable[str] = frozenset(),
    lam: float = DEFAULT_LAMBDA,
    alpha: float = DEFAULT_ALPHA,
    gamma: float = DEFAULT_GAMMA,
    tie_break_salt: str | None = None,
) -> list[MinerStanding]:
    """Draw `pool_size` miners (fewer if fewer are available) and return them in OFFER ORDER.

    - `exclude` (hotkeys, e.g. miners already offered this task) are removed BEFORE ranking,
      so |M| in eq 2 counts only the miners that can actually be drawn.
    - Draws are without replacement, each ∝ p_i (eq 2) of the miners not yet drawn.
    - Offer order = highest first BY RANK: the drawn miners sorted by their position in the
      weight ranking, not by the order they were drawn in. The draw decides WHO is offered;
      the ranking decides who hears first. (The reference validator drew a full weighted
      shuffle and then offered with `list.pop()`, i.e. from the END of the shuffle, so the
      lowest-placed miners were asked first. We deliberately do not copy that.)

    To top up after declines, call again with the miners already offered in `exclude`.
    """
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
        raise ValueError(f"pool_size must be an int >= 0, got {pool_size!r}")
    excluded = set(exclude)
    ranked = rank_miners((m for m in standings if m.hotkey not in excluded), alpha, gamma, tie_break_salt)
    positions = weighted_draw_without_replacement(position_probabilities(len(ranked), lam), pool_size, rng)
    return [ranked[i] for i in sorted(positions)]


@dataclass(frozen=True)
class PoolSizeConfig:
    """How many miners to draw per task (§3.7): uniform whole numbers, both ends included."""

    text_min: int = 8
    text_max: int = 15
    image_min: int = 15
    image_max: int = 25

    def __post_init__(self) -> None:
        for kind, lo, hi in (("text", self.text_min, self.text_max), ("image", self.image_min, self.image_max)):
            if not 1 <= lo <= hi:
                raise ValueError(f"PoolSizeConfig needs 1 <= {kind}_min <= {kind}_max, got {lo}..{hi}")

    def pool_size_for(self, task_type: TaskType, n_available: int, rng: random.Random) -> int:
        """A pool size for this task type, capped at the miners available.

        Always consumes one `rng.randint` so the random stream does not depend on n_available.
        """
        if isinstance(n_available, bool) or not isinstance(n_available, int) or n_available < 0:
            raise ValueError(f"n_available must be an int >= 0, got {n_available!r}")
        lo, hi = (self.text_min, self.text_max) if task_type.is_text else (self.image_min, self.image_max)
        return min(rng.randint(lo, hi), n_available)
