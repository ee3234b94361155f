"""Settings of scorer (GRADIENTS_SCORER_*).

The scoring rules themselves are not settings: they live in the versioned ScoringConfig
(services/scorer/scoring_config.py), so every score names the exact rules that made it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradients.runtime.config import non_negative, positive, setting


@dataclass(frozen=True)
class ScorerSettings:
    refresh_s: float = setting(
        "GRADIENTS_SCORER_REFRESH_S",
        3600.0,
        "seconds after which S_final is recomputed and re-published even when no task was scored "
        "(the 1d/3d/7d windows age); 0 = only when a task is scored",
        check=non_negative,
    )
    tick_s: float = setting(
        "GRADIENTS_SCORER_TICK_S", 30.0, "how often the refresh and outbox loop wakes (seconds)", check=positive
    )
