"""Every scoring constant in one frozen, versioned config (paper §3.4–§3.5; SPEC step 7).

Change any value → bump `version`; `digest()` pins the exact values, so an auditor replaying the
event log can tell which rules produced a set of weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from gradients.evaluation import IMAGE_TEST_WEIGHT, TEXT_TEST_WEIGHT

DAY_S = 86_400.0


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"ScoringConfig.{name} must be a finite number, got {value!r}")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    _finite(name, value)
    if not low <= value <= high:
        raise ValueError(f"ScoringConfig.{name} must be in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class ScoringConfig:
    version: str = "2026.11.1"

    # §3.4.1 anti-gaming
    duplicate_epsilon: float = 1e-6  # eq 9 ε
    suspicious_alpha: float = 0.5  # eq 10 α

    # eq 11 task score
    first_place_score: float = 3.0  # S_first
    penalty_score: float = -1.0  # S_penalty (bottom ρ_penalty of valid miners)
    penalty_fraction: float = 0.25  # ρ_penalty
    failed_submission_score: float = -1.0  # failed/duplicate, only when a valid submission exists

    # §3.4 loss weighting (used by the eval worker to build L_weighted; kept here so one version pins it)
    test_weight_omega: float = TEXT_TEST_WEIGHT  # text: ω·L_test + (1−ω)·L_synth
    image_text_weight_delta: float = IMAGE_TEST_WEIGHT  # image: δ·L_text + (1−δ)·L_no-text

    # eq 12 task weight W_task = max(floor, scale·sqrt(φ·t))
    task_weight_floor: float = 1.0
    task_weight_scale: float = 2.0

    # eq 13 temporal windows
    window_days: tuple[float, ...] = (1.0, 3.0, 7.0)
    window_weights: tuple[float, ...] = (0.3, 0.3, 0.4)
    # True: a task exactly one window old is inside it (age <= window). The reference validator
    # keeps `created_at > now - window` (exclusive); the two differ only for a task exactly on the edge.
    window_edge_inclusive: bool = True

    # eqs 14–15 final transform
    sigmoid_weight_beta: float = 0.7  # β
    linear_weight: float = 0.05  # ω (linear term)
    sigmoid_steepness_gamma: float = 9.0  # γ
    sigmoid_shift_mu: float = 0.5  # μ
    sigmoid_power_nu: float = 0.75  # ν

    # beyond the paper: paired bootstrap confidence that rank 1 beats rank 2.
    # None = paper rule (rank 1 always gets S_first); a value in (0, 1] withholds first place
    # when the confidence is below it.
    min_confidence_for_first: float | None = None
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 20261101

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version:
            raise ValueError(f"ScoringConfig.version must be a non-empty string, got {self.version!r}")
        _finite("duplicate_epsilon", self.duplicate_epsilon)
        if self.duplicate_epsilon < 0:
            raise ValueError(f"ScoringConfig.duplicate_epsilon must be >= 0, got {self.duplicate_epsilon!r}")
        _finite("suspicious_alpha", self.suspicious_alpha)
        for name in (
            "first_place_score",
            "penalty_score",
            "failed_submission_score",
            "task_weight_floor",
            "task_weight_scale",
        ):
            _finite(name, getattr(self, name))
        _in_range("penalty_fraction", self.penalty_fraction, 0.0, 1.0)
        _in_range("test_weight_omega", self.test_weight_omega, 0.0, 1.0)
        _in_range("image_text_weight_delta", self.image_text_weight_delta, 0.0, 1.0)
        if len(self.window_days) == 0 or len(self.window_days) != len(self.window_weights):
            raise ValueError(
                "ScoringConfig.window_days and window_weights must be non-empty and of equal length, "
                f"got {self.window_days!r} and {self.window_weights!r}"
            )
        for days in self.window_days:
            _finite("window_days", days)
            if days <= 0:
                raise ValueError(f"ScoringConfig.window_days must all be > 0, got {self.window_days!r}")
        for w in self.window_weights:
            _in_range("window_weights", w, 0.0, 1.0)
        if not math.isclose(sum(self.window_weights), 1.0, abs_tol=1e-9):
            raise ValueError(f"ScoringConfig.window_weights must sum to 1, got {self.window_weights!r}")
        for name in (
            "sigmoid_weight_beta",
            "linear_weight",
            "sigmoid_steepness_gamma",
            "sigmoid_shift_mu",
            "sigmoid_power_nu",
        ):
            _finite(name, getattr(self, name))
        if self.sigmoid_power_nu <= 0:
            raise ValueError(f"ScoringConfig.sigmoid_power_nu must be > 0, got {self.sigmoid_power_nu!r}")
        c = self.min_confidence_for_first
        if c is not None:
            _finite("min_confidence_for_first", c)
            if not 0.0 < c <= 1.0:
                raise ValueError(f"ScoringConfig.min_confidence_for_first must be in (0, 1] or None, got {c!r}")
        if (
            isinstance(self.bootstrap_samples, bool)
            or not isinstance(self.bootstrap_samples, int)
            or self.bootstrap_samples < 1
        ):
            raise ValueError(f"ScoringConfig.bootstrap_samples must be an int >= 1, got {self.bootstrap_samples!r}")
        if isinstance(self.bootstrap_seed, bool) or not isinstance(self.bootstrap_seed, int) or self.bootstrap_seed < 0:
            raise ValueError(f"ScoringConfig.bootstrap_seed must be an int >= 0, got {self.bootstrap_seed!r}")

    @property
    def window_seconds(self) -> tuple[float, ...]:
        return tuple(d * DAY_S for d in self.window_days)

    @property
    def window_names(self) -> tuple[str, ...]:
        """Window labels as the Scorer API names them: "1d", "3d", "7d"."""
        return tuple(f"{d:g}d" for d in self.window_days)

    def canonical_json(self) -> str:
        # sort_keys + fixed separators: the same values always give the same bytes.
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of every field, version included."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


DEFAULT_SCORING_CONFIG = ScoringConfig()
