"""Pure formulas behind the tuned strategies (no torch): the LR range test's learning rates and
its steepest-descent pick, successive halving's rung plan, and sequence packing.

Every function here is deterministic and unit-tested against hand-computed values
(tests/unit/test_training_tuning.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def exponential_lrs(lr_min: float, lr_max: float, n: int) -> list[float]:
    """n learning rates growing geometrically from lr_min to lr_max (both included)."""
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
    if n < 2:
        raise ValueError(f"an LR ramp needs at least 2 steps, got {n}")
    ratio = lr_max / lr_min
    return [lr_min * ratio ** (i / (n - 1)) for i in range(n)]


def smooth(values: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (beta 0 = the values themselves)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1.0 - beta) * v
        out.append(avg / (1.0 - beta**i))
    return out


def steepest_descent_lr(
    lrs: Sequence[float], losses: Sequence[float], beta: float = 0.5, diverge_factor: float = 4.0
) -> float:
    """The learning rate where the (smoothed) loss falls fastest per unit of log(lr).

    The ramp is cut at the first point whose smoothed loss exceeds `diverge_factor` x the
    lowest smoothed loss so far (or is not finite): past that the run diverged. Slopes are
    forward differences g_i = (s_{i+1} - s_i) / (log lr_{i+1} - log lr_i); the pick is lr_i of
    the most negative g_i. With fewer than 2 usable points, or no descent at all, it is the lr
    of the lowest smoothed loss divided by 10 (the classic fallback), at least lrs[0].
    """
    if len(lrs) != len(losses) or not lrs:
        raise ValueError("lrs and losses must be non-empty and of the same length")
    finite = []
    for loss in losses:
        if not math.isfinite(loss):
            break
        finite.append(loss)
    s = smooth(finite, beta) if finite else []
    usable = 0
    best = math.inf
    for v in s:
        if v > diverge_factor * best:
            break
        best = min(best, v)
        usable += 1
    s = s[:usable]
    if usable < 2:
        return lrs[0]
    slopes = [(s[i + 1] - s[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(usable - 1)]
    i_best = min(range(len(slopes)), key=lambda i: slopes[i])
    if slopes[i_best] < 0:
        return lrs[i_best]
    i_min = min(range(usable), key=lambda i: s[i])
    return max(lrs[0], lrs[i_min] / 10.0)


@dataclass(frozen=True)
class Rung:
    index: int
    configs: int  # how many configurations train in this rung
    seconds_each: float  # training seconds each of them gets in this rung


def halving_plan(n_configs: int, eta: int, seconds: float) -> list[Rung]:
    """Successive halving: rung k trains ceil(n / eta^k) configurations until one is left, each
    rung gets an equal share of `seconds`, split equally between its configurations (so a
    survivor gets more time per rung as the field narrows)."""
    if n_configs < 1 or eta < 2:
        raise ValueError(f"need n_configs >= 1 and eta >= 2, got {n_configs}, {eta}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    counts = [n_configs]
    while counts[-1] > 1:
        counts.append(math.ceil(counts[-1] / eta))
    share = seconds / len(counts)
    return [Rung(k, c, share / c) for k, c in enumerate(counts)]


def survivors(losses: Sequence[float | None], keep: int) -> list[int]:
    """Indices of the `keep` lowest losses (None and non-finite last), ties by index."""

    def key(i: int) -> tuple[int, float, int]:
        v = losses[i]
        ok = v is not None and math.isfinite(v)
        return (0 if ok else 1, v if ok and v is not None else 0.0, i)

    return sorted(sorted(range(len(losses)), key=key)[:keep])


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: group example indices into packs of at most `capacity` tokens.

    Examples are taken longest first (ties by index) and each goes into the first pack it
    fits in; an example longer than `capacity` gets a pack of its own. Inside a pack the
    indices are in ascending order; packs are ordered by their first index.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for p, free in enumerate(room):
            if lengths[i] <= free:
                packs[p].append(i)
                room[p] -= lengths[i]
                break
        else:
            packs.append([i])
            room.append(capacity - lengths[i])
    return sorted((sorted(p) for p in packs), key=lambda p: p[0])


def segment_positions(lengths: Sequence[int]) -> list[int]:
    """Position ids of a pack: 0..len-1 restarting at every segment."""
    return [j for n in lengths for j in range(n)]
