"""Wall-clock deadlines for training, so a miner always stops in time to upload.

A task's deadline is absolute (unix seconds). Training must end `upload_margin_s` before it,
leaving time to save the adapter and upload it. `DeadlineGuard` predicts whether one more
step still fits (from the durations of the steps so far), and `DeadlineCallback` applies the
same guard to a transformers/trl `Trainer` (built on first use, see `__getattr__`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


class DeadlinePassed(RuntimeError):
    """Raised when training is asked to start after its time budget is already spent."""


@dataclass(frozen=True)
class Deadline:
    at: float  # absolute wall-clock deadline, unix seconds (time.time())
    upload_margin_s: float = 0.0  # reserved before `at` for saving and uploading

    def __post_init__(self) -> None:
        if self.upload_margin_s < 0:
            raise ValueError(f"Deadline.upload_margin_s must be >= 0, not {self.upload_margin_s}")

    @classmethod
    def after(cls, seconds: float, upload_margin_s: float = 0.0) -> Deadline:
        """A deadline `seconds` from now."""
        return cls(at=time.time() + seconds, upload_margin_s=upload_margin_s)

    @property
    def training_end(self) -> float:
        """When training must have stopped (the deadline minus the upload margin)."""
        return self.at - self.upload_margin_s

    def remaining(self, now: float | None = None) -> float:
        """Seconds of training time left (negative once spent)."""
        return self.training_end - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0

    def until(self, end: float) -> Deadline:
        """A deadline for part of the budget: ends at `end` or at this training end if earlier."""
        return Deadline(at=min(end, self.training_end))


class DeadlineGuard:
    """Says whether one more step fits before the deadline's training end.

    The step estimate is the longest of the last few steps: steps vary (padding, warm-up),
    and overrunning the deadline costs the whole task while stopping a step early costs little.
    """

    def __init__(self, deadline: Deadline, step_hint_s: float = 0.0, window: int = 8) -> None:
        self.deadline = deadline
        self.step_hint_s = step_hint_s  # expected step time before any step was measured
        self._durations: deque[float] = deque(maxlen=window)
        self._started: float | None = None
        self.stopped_by_deadline = False

    def step_estimate(self) -> float:
        return max(self._durations, default=self.step_hint_s)

    def should_stop(self) -> bool:
        """True when a step starting now would probably end after the training end."""
        if time.time() + self.step_estimate() >= self.deadline.training_end:
            self.stopped_by_deadline = True
        return self.stopped_by_deadline

    def step_started(self) -> None:
        self._started = time.time()

    def step_finished(self) -> None:
        if self._started is not None:
            self._durations.append(time.time() - self._started)
            self._started = None


def _deadline_callback_class() -> type:
    from transformers import TrainerCallback

    class DeadlineCallback(TrainerCallback):
        """Stops a `transformers.Trainer` (or a trl trainer) before the deadline's training end.

        The Trainer runs its first step even when told to stop at train begin, so check
        `callback.guard.should_stop()` before calling `trainer.train()`.
        """

        def __init__(self, deadline: Deadline, step_hint_s: float = 0.0) -> None:
            self.guard = DeadlineGuard(deadline, step_hint_s)

        def on_step_begin(self, args, state, control, **kwargs):
            self.guard.step_started()
            return control

        def on_step_end(self, args, state, control, **kwargs):
            self.guard.step_finished()
            if self.guard.should_stop():
                control.should_training_stop = True
            return control

        @property
        def stopped_by_deadline(self) -> bool:
            return self.guard.stopped_by_deadline

    DeadlineCallback.__module__ = __name__
    DeadlineCallback.__qualname__ = "DeadlineCallback"
    return DeadlineCallback


def __getattr__(name: str):
    # DeadlineCallback is built on first use: transformers takes seconds to import, and a
    # miner's network side only needs Deadline.
    if name == "DeadlineCallback":
        cls = _deadline_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
