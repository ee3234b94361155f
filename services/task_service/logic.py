"""Task scheduling logic (paper §3.2 eq 1, §3.3.1 eq 4, §3.7; SPEC steps 1 and 3, "Task states").

Pure functions and dataclasses only: no NATS, Redis or gRPC here. Randomness always comes
from a `random.Random` the caller passes in, so a seeded caller (tests, replays) gets the
same decisions every time.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gradients.task_types import TaskType  # the shared vocabulary; re-exported for this service

# ---------------------------------------------------------------------------------------
# Task types and the synthetic mix (eq 1)
# ---------------------------------------------------------------------------------------


_MIX_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class SyntheticMix:
    """P(TaskType = t) for synthetic tasks (eq 1). Defaults are the paper's values."""

    instruct: float = 0.25
    dpo: float = 0.10
    grpo: float = 0.30
    image: float = 0.35

    def __post_init__(self) -> None:
        for name, value in self._named():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"SyntheticMix.{name} must be a finite number >= 0, got {value!r}")
        total = math.fsum(value for _, value in self._named())
        if abs(total - 1.0) > _MIX_SUM_TOLERANCE:
            raise ValueError(f"SyntheticMix probabilities must sum to 1, got {total!r}")

    def _named(self) -> list[tuple[str, float]]:
        return [("instruct", self.instruct), ("dpo", self.dpo), ("grpo", self.grpo), ("image", self.image)]

    def probabilities(self) -> dict[TaskType, float]:
        """Probabilities keyed by task type, in TaskType declaration order."""
        return {
            TaskType.INSTRUCT_TEXT: self.instruct,
            TaskType.DPO: self.dpo,
            TaskType.GRPO: self.grpo,
            TaskType.IMAGE: self.image,
        }

    def draw_task_type(self, rng: random.Random) -> TaskType:
        """One draw from eq 1 (consumes exactly one `rng.random()`)."""
        target = rng.random()
        cumulative = 0.0
        last_possible: TaskType | None = None
        for task_type, p in self.probabilities().items():
            if p <= 0:
                continue
            cumulative += p
            last_possible = task_type
            if target < cumulative:
                return task_type
        # Float round-off can leave the cumulative sum a hair under 1.
        assert last_possible is not None  # __post_init__ guarantees some p > 0
        return last_possible


DEFAULT_SYNTHETIC_MIX = SyntheticMix()

# ---------------------------------------------------------------------------------------
# Time allocation (eq 4) and the time scale
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoursBin:
    """Text datasets with at least `min_rows` rows (up to the next bin's edge) get
    a whole number of hours drawn uniformly from [min_hours, max_hours], both ends included."""

    min_rows: int
    min_hours: int
    max_hours: int


@dataclass(frozen=True)
class TimeAllocationConfig:
    """Eq 4 as half-open row bins: a bin owns [its min_rows, next bin's min_rows).

    The paper's intervals share their edges ([10000, 25000], [25000, 50000], ...); we give
    each edge to the bin that STARTS there, so 25 000 rows → [4, 8] h, 24 999 → [3, 6] h.
    Below 10k rows (not in the paper; SPEC) → [1, 3] h. The last bin has no upper edge:
    the paper stops at 500k rows, and bigger datasets keep its largest allocation, [7, 10] h.
    Hours are whole numbers, like the reference validator's `randint`.
    """

    text_bins: tuple[HoursBin, ...] = (
        HoursBin(0, 1, 3),
        HoursBin(10_000, 3, 6),
        HoursBin(25_000, 4, 8),
        HoursBin(50_000, 5, 9),
        HoursBin(100_000, 7, 10),
    )
    image_hours: tuple[int, int] = (1, 2)

    def __post_init__(self) -> None:
        if not self.text_bins:
            raise ValueError("TimeAllocationConfig.text_bins must not be empty")
        if self.text_bins[0].min_rows != 0:
            raise ValueError("TimeAllocationConfig.text_bins[0].min_rows must be 0 so every size has a bin")
        for i, b in enumerate(self.text_bins):
            if not 1 <= b.min_hours <= b.max_hours:
                raise ValueError(f"TimeAllocationConfig.text_bins[{i}] needs 1 <= min_hours <= max_hours, got {b}")
            if i and b.min_rows <= self.text_bins[i - 1].min_rows:
                raise ValueError(f"TimeAllocationConfig.text_bins[{i}].min_rows must increase, got {b.min_rows}")
        lo, hi = self.image_hours
        if not 1 <= lo <= hi:
            raise ValueError(f"TimeAllocationConfig.image_hours needs 1 <= min <= max, got {self.image_hours}")


DEFAULT_TIME_ALLOCATION = TimeAllocationConfig()


def hours_range(
    task_type: TaskType, n_rows: int, config: TimeAllocationConfig = DEFAULT_TIME_ALLOCATION
) -> tuple[int, int]:
    """The [min, max] hours eq 4 allows for a dataset of `n_rows` rows."""
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
        raise ValueError(f"n_rows must be an int >= 0, got {n_rows!r}")
    if task_type is TaskType.IMAGE:
        return config.image_hours  # 1–2 h regardless of dataset size (§3.3.1)
    if n_rows == 0:
        raise ValueError("n_rows must be > 0 for a text task: there is nothing to train on")
    chosen = config.text_bins[0]
    for b in config.text_bins:
        if n_rows >= b.min_rows:
            chosen = b
    return chosen.min_hours, chosen.max_hours


def allocate_hours(
    task_type: TaskType, n_rows: int, rng: random.Random, config: TimeAllocationConfig = DEFAULT_TIME_ALLOCATION
) -> int:
    """Δt in nominal hours (eq 4): uniform whole hours within `hours_range`."""
    lo, hi = hours_range(task_type, n_rows, config)
    return rng.randint(lo, hi)


PRODUCTION_TIME_SCALE = 3600.0  # real seconds per nominal hour


def scaled_seconds(hours: float, time_scale: float = PRODUCTION_TIME_SCALE) -> float:
    """Real seconds for `hours` nominal hours. time_scale = real seconds per nominal hour:
    3600 in production, e.g. 2 in tests, so demos run the same logic in seconds."""
    if not math.isfinite(hours) or hours < 0:
        raise ValueError(f"hours must be finite and >= 0, got {hours!r}")
    if not math.isfinite(time_scale) or time_scale <= 0:
        raise ValueError(f"time_scale must be finite and > 0, got {time_scale!r}")
    return hours * time_scale


# ---------------------------------------------------------------------------------------
# Which tasks to start now (SPEC step 1)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRef:
    """A dataset a synthetic task may use; its row count sets the time allocation (eq 4)."""

    dataset_id: str
    n_rows: int


@dataclass(frozen=True)
class SyntheticPools:
    """Candidate base models and datasets per task type for synthetic tasks."""

    base_models: Mapping[TaskType, Sequence[str]]
    datasets: Mapping[TaskType, Sequence[DatasetRef]]

    def check_covers(self, mix: SyntheticMix) -> None:
        """Every task type the mix can draw needs at least one model and one dataset."""
        for task_type, p in mix.probabilities().items():
            if p <= 0:
                continue
            if not self.base_models.get(task_type):
                raise ValueError(f"SyntheticPools.base_models[{task_type.name}] is empty but the mix gives it p={p}")
            if not self.datasets.get(task_type):
                raise ValueError(f"SyntheticPools.datasets[{task_type.name}] is empty but the mix gives it p={p}")


@dataclass(frozen=True)
class SyntheticTaskSpec:
    """A synthetic task to create: T = <M, D, Δt> (E follows from the task type)."""

    task_type: TaskType
    base_model: str
    dataset: DatasetRef
    hours: int


OrganicT = TypeVar("OrganicT")


@dataclass(frozen=True)
class StartPlan(Generic[OrganicT]):
    organic: list[OrganicT] = field(default_factory=list)
    synthetic: list[SyntheticTaskSpec] = field(default_factory=list)


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def next_tasks_to_start(
    organic_queue: Sequence[OrganicT],
    synthetic_running: int,
    max_concurrent_synthetic: int,
    free_slots: int,
    rng: random.Random,
    pools: SyntheticPools,
    mix: SyntheticMix = DEFAULT_SYNTHETIC_MIX,
    time_config: TimeAllocationConfig = DEFAULT_TIME_ALLOCATION,
) -> StartPlan[OrganicT]:
    """Organic tasks first (queue order); synthetic tasks fill the slots left, while
    fewer than `max_concurrent_synthetic` synthetic tasks run.

    free_slots: how many tasks may start now, organic and synthetic together.
    Organic tasks never count against the synthetic cap. Per synthetic task the rng is
    used in a fixed order: type (eq 1), base model, dataset, hours (eq 4).
    """
    _check_count("synthetic_running", synthetic_running)
    _check_count("max_concurrent_synthetic", max_concurrent_synthetic)
    _check_count("free_slots", free_slots)

    organic = list(organic_queue[:free_slots])
    gap = free_slots - len(organic)
    n_synthetic = max(0, min(gap, max_concurrent_synthetic - synthetic_running))
    if n_synthetic:
        pools.check_covers(mix)

    synthetic: list[SyntheticTaskSpec] = []
    for _ in range(n_synthetic):
        task_type = mix.draw_task_type(rng)
        base_model = rng.choice(list(pools.base_models[task_type]))
        dataset = rng.choice(list(pools.datasets[task_type]))
        hours = allocate_hours(task_type, dataset.n_rows, rng, time_config)
        synthetic.append(SyntheticTaskSpec(task_type, base_model, dataset, hours))
    return StartPlan(organic=organic, synthetic=synthetic)


# ---------------------------------------------------------------------------------------
# Task states (SPEC "Task states")
# ---------------------------------------------------------------------------------------


class TaskState(enum.Enum):
    PENDING = "pending"
    PREPARING_DATA = "preparing_data"
    LOOKING_FOR_MINERS = "looking_for_miners"
    DELAYED = "delayed"
    TRAINING = "training"
    PREEVALUATION = "preevaluation"
    EVALUATING = "evaluating"
    SCORED = "scored"
    FAILED = "failed"
    CANCELLED = "cancelled"  # CancelTask


class FailureReason(enum.Enum):
    DATA_PREPARATION = "data preparation"
    NO_MINERS = "no miners"
    EVALUATION = "evaluation"


TERMINAL_STATES: frozenset[TaskState] = frozenset({TaskState.SCORED, TaskState.FAILED, TaskState.CANCELLED})

_S = TaskState
# Forward moves of the happy path, the LOOKING_FOR_MINERS <-> DELAYED loop, and
# EVALUATING -> PREEVALUATION to re-queue an evaluation (e.g. a worker died mid-way).
_FORWARD_MOVES: dict[TaskState, frozenset[TaskState]] = {
    _S.PENDING: frozenset({_S.PREPARING_DATA}),
    _S.PREPARING_DATA: frozenset({_S.LOOKING_FOR_MINERS}),
    _S.LOOKING_FOR_MINERS: frozenset({_S.TRAINING, _S.DELAYED}),
    _S.DELAYED: frozenset({_S.LOOKING_FOR_MINERS}),
    _S.TRAINING: frozenset({_S.PREEVALUATION}),
    _S.PREEVALUATION: frozenset({_S.EVALUATING}),
    _S.EVALUATING: frozenset({_S.SCORED, _S.PREEVALUATION}),
}
# Any live task may also fail (with a reason) or be cancelled; terminal states go nowhere.
ALLOWED_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    state: frozenset() if state in TERMINAL_STATES else _FORWARD_MOVES[state] | {_S.FAILED, _S.CANCELLED}
    for state in TaskState
}


class IllegalTransition(ValueError):
    def __init__(self, old: TaskState, new: TaskState) -> None:
        allowed = sorted(s.name for s in ALLOWED_TRANSITIONS[old])
        if old in TERMINAL_STATES:
            why = f"{old.name} is terminal"
        else:
            why = f"allowed from {old.name}: {', '.join(allowed)}"
        super().__init__(f"illegal task state transition {old.name} -> {new.name} ({why})")
        self.old = old
        self.new = new


def check_transition(old: TaskState, new: TaskState) -> None:
    """Raise IllegalTransition unless old -> new is a move of the task state machine."""
    if new not in ALLOWED_TRANSITIONS[old]:
        raise IllegalTransition(old, new)


# ---------------------------------------------------------------------------------------
# Too few acceptances: delay or fail (§3.7)
# ---------------------------------------------------------------------------------------


def delayed_hours(initial_hours: float, attempts: int, c: float) -> float:
    """Δt_delay = Δt_initial + c·attempts (§3.7): each delay extends the time allocation."""
    if not math.isfinite(initial_hours) or initial_hours <= 0:
        raise ValueError(f"initial_hours must be finite and > 0, got {initial_hours!r}")
    _check_count("attempts", attempts)
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"c must be finite and >= 0, got {c!r}")
    return initial_hours + c * attempts


@dataclass(frozen=True)
class DelayPolicy:
    """When too few miners accept, retry later with more time, at most `max_attempts` times.

    Defaults come from the reference validator: retry 15 min later (TASK_TIME_DELAY), at most
    6 delays (MAX_DELAY_TIMES), at least 1 accepted miner (MINIMUM_MINER_POOL). The paper
    gives no value for c; we reuse the 15 minutes. (The reference only pushes the retry time
    back and leaves Δt as it is; the paper, which we follow, also extends Δt.) The reference
    fails synthetic tasks at once instead of delaying them: set delay_synthetic=False for that.
    """

    c_hours: float = 0.25
    max_attempts: int = 6
    min_acceptances: int = 1
    retry_wait_hours: float = 0.25
    delay_synthetic: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.c_hours) or self.c_hours < 0:
            raise ValueError(f"DelayPolicy.c_hours must be finite and >= 0, got {self.c_hours!r}")
        _check_count("DelayPolicy.max_attempts", self.max_attempts)
        if (
            isinstance(self.min_acceptances, bool)
            or not isinstance(self.min_acceptances, int)
            or self.min_acceptances < 1
        ):
            raise ValueError(f"DelayPolicy.min_acceptances must be an int >= 1, got {self.min_acceptances!r}")
        if not math.isfinite(self.retry_wait_hours) or self.retry_wait_hours < 0:
            raise ValueError(f"DelayPolicy.retry_wait_hours must be finite and >= 0, got {self.retry_wait_hours!r}")


@dataclass(frozen=True)
class OfferRoundDecision:
    """What to do with a task after a round of offers.

    next_state: TRAINING, DELAYED or FAILED.
    hours: Δt to train with (TRAINING) or to offer next time (DELAYED); None when FAILED.
    attempts: delays so far, including the one just decided.
    retry_in_hours: when DELAYED, how long to wait before LOOKING_FOR_MINERS again.
    reason: FailureReason.NO_MINERS when FAILED.
    """

    next_state: TaskState
    hours: float | None
    attempts: int
    retry_in_hours: float | None = None
    reason: FailureReason | None = None


def decide_after_offers(
    n_accepted: int,
    attempts: int,
    initial_hours: float,
    policy: DelayPolicy = DelayPolicy(),
    is_organic: bool = True,
) -> OfferRoundDecision:
    """Enough acceptances → TRAINING; too few and attempts < max → DELAYED with
    Δt_initial + c·(attempts+1); otherwise → FAILED ("no miners").

    attempts: how many times this task has been delayed before this round.
    """
    _check_count("n_accepted", n_accepted)
    current_hours = delayed_hours(initial_hours, attempts, policy.c_hours)
    if n_accepted >= policy.min_acceptances:
        return OfferRoundDecision(TaskState.TRAINING, current_hours, attempts)
    may_delay = is_organic or policy.delay_synthetic
    if may_delay and attempts < policy.max_attempts:
        return OfferRoundDecision(
            TaskState.DELAYED,
            delayed_hours(initial_hours, attempts + 1, policy.c_hours),
            attempts + 1,
            retry_in_hours=policy.retry_wait_hours,
        )
    return OfferRoundDecision(TaskState.FAILED, None, attempts, reason=FailureReason.NO_MINERS)
