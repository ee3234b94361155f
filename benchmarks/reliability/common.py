"""What a reliability scenario reports, and small helpers shared by the scenarios."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ScenarioResult:
    """One line of the reliability report.

    tried: faults injected, inputs sent or calls made; handled: how many of those the mesh
    survived or answered properly; lost: data lost (a submission, a task, a score: must be 0);
    crashes: service processes that died without being killed by the scenario (must be 0).
    """

    category: str  # "faults" | "load" | "bad input" | "hostile"
    name: str
    tried: int = 0
    handled: int = 0
    lost: int = 0
    crashes: int = 0
    seconds: float = 0.0
    figures: dict[str, float | int | str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # context for a reader, not failures

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.crashes == 0 and self.handled == self.tried and not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def summary(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.figures.items())
        head = f"[{self.category}] {self.name}: {self.handled}/{self.tried} handled, lost {self.lost}, crashes {self.crashes}"
        tail = f"; problems: {self.problems[:5]}" if self.problems else ""
        return f"{head}{' (' + extra + ')' if extra else ''}{tail}"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class ScenarioDir:
    """Where a scenario keeps its data: the folder given, or a temporary one that `cleanup` removes."""

    def __init__(self, data_dir: Path | str | None, prefix: str):
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix) if data_dir is None else None
        self.path = Path(self._tmp.name) if self._tmp is not None else Path(data_dir)

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
