"""Task scheduling: eq 1 mix, organic-first start plan, eq 4 time bins, §3.7 delays, states."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.task_service.logic import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    DatasetRef,
    DelayPolicy,
    FailureReason,
    HoursBin,
    IllegalTransition,
    SyntheticMix,
    SyntheticPools,
    TaskState,
    TaskType,
    TimeAllocationConfig,
    allocate_hours,
    check_transition,
    decide_after_offers,
    delayed_hours,
    hours_range,
    next_tasks_to_start,
    scaled_seconds,
)

ABS_TOL = 0.02  # absolute, on probabilities

POOLS = SyntheticPools(
    base_models={
        TaskType.INSTRUCT_TEXT: ["llama-a", "qwen-b"],
        TaskType.DPO: ["llama-a"],
        TaskType.GRPO: ["qwen-b", "qwen-c"],
        TaskType.IMAGE: ["sdxl", "flux"],
    },
    datasets={
        TaskType.INSTRUCT_TEXT: [DatasetRef("alpaca", 9_999), DatasetRef("dolly", 30_000)],
        TaskType.DPO: [DatasetRef("prefs", 120_000)],
        TaskType.GRPO: [DatasetRef("gsm", 50_000)],
        TaskType.IMAGE: [DatasetRef("faces", 40)],
    },
)


# --- eq 1 ------------------------------------------------------------------------------


def test_synthetic_mix_frequencies_over_20000_tasks_match_eq1():
    plan = next_tasks_to_start([], 0, 20_000, 20_000, random.Random(2024), POOLS)
    assert len(plan.synthetic) == 20_000
    counts = Counter(spec.task_type for spec in plan.synthetic)
    expected = {TaskType.INSTRUCT_TEXT: 0.25, TaskType.DPO: 0.10, TaskType.GRPO: 0.30, TaskType.IMAGE: 0.35}
    for task_type, p in expected.items():
        assert abs(counts[task_type] / 20_000 - p) < ABS_TOL, (task_type, counts[task_type] / 20_000)


def test_custom_mix_and_zero_probability_types_are_never_drawn():
    mix = SyntheticMix(instruct=0.5, dpo=0.0, grpo=0.5, image=0.0)
    rng = random.Random(1)
    drawn = Counter(mix.draw_task_type(rng) for _ in range(5_000))
    assert set(drawn) == {TaskType.INSTRUCT_TEXT, TaskType.GRPO}
    assert abs(drawn[TaskType.GRPO] / 5_000 - 0.5) < ABS_TOL


def test_synthetic_mix_is_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        SyntheticMix(instruct=0.3, dpo=0.1, grpo=0.3, image=0.35)
    with pytest.raises(ValueError, match="SyntheticMix.dpo"):
        SyntheticMix(instruct=0.35, dpo=-0.1, grpo=0.4, image=0.35)


# --- start plan ----------------------------------------------------------------------


def test_organic_tasks_come_first_in_queue_order():
    queue = ["org-1", "org-2", "org-3"]
    plan = next_tasks_to_start(queue, 0, 10, 2, random.Random(0), POOLS)
    assert plan.organic == ["org-1", "org-2"]
    assert plan.synthetic == []  # no gap left
    plan = next_tasks_to_start(queue, 0, 10, 5, random.Random(0), POOLS)
    assert plan.organic == queue
    assert len(plan.synthetic) == 2  # synthetic only fills the gap


def test_synthetic_cap_is_respected_and_does_not_limit_organic():
    assert len(next_tasks_to_start([], 13, 15, 10, random.Random(0), POOLS).synthetic) == 2
    assert len(next_tasks_to_start([], 15, 15, 10, random.Random(0), POOLS).synthetic) == 0
    assert len(next_tasks_to_start([], 20, 15, 10, random.Random(0), POOLS).synthetic) == 0  # over cap: none, no error
    plan = next_tasks_to_start(["a", "b", "c", "d"], 15, 15, 4, random.Random(0), POOLS)
    assert plan.organic == ["a", "b", "c", "d"] and plan.synthetic == []
    assert next_tasks_to_start([], 0, 15, 0, random.Random(0), POOLS).synthetic == []
    with pytest.raises(ValueError, match="free_slots"):
        next_tasks_to_start([], 0, 15, -1, random.Random(0), POOLS)


def test_synthetic_specs_draw_from_the_pools_of_their_type_with_eq4_hours():
    plan = next_tasks_to_start([], 0, 500, 500, random.Random(8), POOLS)
    for spec in plan.synthetic:
        assert spec.base_model in POOLS.base_models[spec.task_type]
        assert spec.dataset in POOLS.datasets[spec.task_type]
        lo, hi = hours_range(spec.task_type, spec.dataset.n_rows)
        assert lo <= spec.hours <= hi
    assert {s.base_model for s in plan.synthetic if s.task_type is TaskType.IMAGE} == {"sdxl", "flux"}


def test_same_seed_same_plan():
    a = next_tasks_to_start(["x"], 0, 10, 6, random.Random(42), POOLS)
    b = next_tasks_to_start(["x"], 0, 10, 6, random.Random(42), POOLS)
    assert a == b


def test_pools_must_cover_every_drawable_type():
    no_image = SyntheticPools(
        base_models={t: ["m"] for t in TaskType if t is not TaskType.IMAGE},
        datasets={t: [DatasetRef("d", 100)] for t in TaskType},
    )
    with pytest.raises(ValueError, match=r"base_models\[IMAGE\]"):
        next_tasks_to_start([], 0, 5, 5, random.Random(0), no_image)
    # fine when the mix never draws images, or when no synthetic task is needed
    text_only = SyntheticMix(instruct=0.5, dpo=0.2, grpo=0.3, image=0.0)
    assert len(next_tasks_to_start([], 0, 5, 5, random.Random(0), no_image, text_only).synthetic) == 5
    assert next_tasks_to_start(["o"], 0, 5, 1, random.Random(0), no_image).organic == ["o"]


# --- eq 4 ------------------------------------------------------------------------------

# Bins are half-open [lo, hi): an edge belongs to the bin that starts there.
TEXT_EDGES = [
    (1, (1, 3)),
    (9_999, (1, 3)),
    (10_000, (3, 6)),
    (24_999, (3, 6)),
    (25_000, (4, 8)),
    (49_999, (4, 8)),
    (50_000, (5, 9)),
    (99_999, (5, 9)),
    (100_000, (7, 10)),
    (499_999, (7, 10)),
    (500_000, (7, 10)),
    (500_001, (7, 10)),  # above the paper's 500k: keeps the largest allocation
    (10_000_000, (7, 10)),
]


@pytest.mark.parametrize("n_rows,expected", TEXT_EDGES)
@pytest.mark.parametrize("task_type", [TaskType.INSTRUCT_TEXT, TaskType.DPO, TaskType.GRPO])
def test_text_hours_at_every_bin_edge(task_type, n_rows, expected):
    assert hours_range(task_type, n_rows) == expected
    rng = random.Random(n_rows)
    drawn = {allocate_hours(task_type, n_rows, rng) for _ in range(300)}
    assert drawn == set(range(expected[0], expected[1] + 1))  # whole hours, both ends reachable


@pytest.mark.parametrize("n_rows", [0, 9_999, 10_000, 500_000, 2_000_000])
def test_image_hours_ignore_dataset_size(n_rows):
    assert hours_range(TaskType.IMAGE, n_rows) == (1, 2)
    rng = random.Random(0)
    assert {allocate_hours(TaskType.IMAGE, n_rows, rng) for _ in range(100)} == {1, 2}


def test_hours_input_validation():
    with pytest.raises(ValueError, match="n_rows"):
        hours_range(TaskType.INSTRUCT_TEXT, 0)
    with pytest.raises(ValueError, match="n_rows"):
        hours_range(TaskType.DPO, -5)
    with pytest.raises(ValueError, match="min_rows must be 0"):
        TimeAllocationConfig(text_bins=(HoursBin(100, 1, 2),))
    with pytest.raises(ValueError, match="must increase"):
        TimeAllocationConfig(text_bins=(HoursBin(0, 1, 2), HoursBin(0, 2, 3)))
    custom = TimeAllocationConfig(text_bins=(HoursBin(0, 1, 1), HoursBin(1_000, 2, 2)), image_hours=(3, 3))
    assert hours_range(TaskType.GRPO, 999, custom) == (1, 1)
    assert hours_range(TaskType.GRPO, 1_000, custom) == (2, 2)
    assert hours_range(TaskType.IMAGE, 5, custom) == (3, 3)


def test_scaled_seconds():
    assert scaled_seconds(3) == 10_800.0
    assert scaled_seconds(3, time_scale=2) == 6.0
    assert scaled_seconds(1.5, time_scale=2) == 3.0
    with pytest.raises(ValueError, match="time_scale"):
        scaled_seconds(1, time_scale=0)
    with pytest.raises(ValueError, match="hours"):
        scaled_seconds(-1, time_scale=2)


# --- §3.7 delays ---------------------------------------------------------------------


def test_delayed_hours_formula():
    assert delayed_hours(4, 0, 0.5) == 4.0
    assert delayed_hours(4, 3, 0.5) == 5.5
    assert delayed_hours(2, 2, 0.25) == 2.5
    with pytest.raises(ValueError, match="attempts"):
        delayed_hours(4, -1, 0.5)
    with pytest.raises(ValueError, match="c must"):
        delayed_hours(4, 1, -0.5)


def test_enough_acceptances_start_training_with_current_hours():
    policy = DelayPolicy(c_hours=0.5, max_attempts=3, min_acceptances=2)
    d = decide_after_offers(2, 0, 4, policy)
    assert (d.next_state, d.hours, d.attempts, d.reason) == (TaskState.TRAINING, 4.0, 0, None)
    d = decide_after_offers(5, 2, 4, policy)  # delayed twice before: Δt = 4 + 0.5·2
    assert (d.next_state, d.hours, d.attempts) == (TaskState.TRAINING, 5.0, 2)


def test_too_few_acceptances_delay_then_fail_with_no_miners():
    policy = DelayPolicy(c_hours=0.5, max_attempts=3, min_acceptances=2, retry_wait_hours=0.25)
    d = decide_after_offers(1, 0, 4, policy)
    assert (d.next_state, d.hours, d.attempts, d.retry_in_hours) == (TaskState.DELAYED, 4.5, 1, 0.25)
    d = decide_after_offers(0, 2, 4, policy)
    assert (d.next_state, d.hours, d.attempts) == (TaskState.DELAYED, 5.5, 3)
    d = decide_after_offers(1, 3, 4, policy)
    assert (d.next_state, d.hours, d.reason) == (TaskState.FAILED, None, FailureReason.NO_MINERS)
    assert d.reason.value == "no miners"


def test_a_task_nobody_accepts_walks_legal_states_to_failed():
    policy = DelayPolicy(c_hours=1.0, max_attempts=4)
    state, attempts, hours_seen = TaskState.LOOKING_FOR_MINERS, 0, []
    while True:
        d = decide_after_offers(0, attempts, 3, policy)
        check_transition(state, d.next_state)
        state, attempts = d.next_state, d.attempts
        if state is TaskState.FAILED:
            break
        hours_seen.append(d.hours)
        check_transition(state, TaskState.LOOKING_FOR_MINERS)
        state = TaskState.LOOKING_FOR_MINERS
    assert hours_seen == [4.0, 5.0, 6.0, 7.0]  # Δt_initial + c·attempts, 4 delays
    assert attempts == 4


def test_synthetic_tasks_fail_at_once_when_policy_says_so():
    policy = DelayPolicy(delay_synthetic=False)
    assert decide_after_offers(0, 0, 3, policy, is_organic=False).next_state is TaskState.FAILED
    assert decide_after_offers(0, 0, 3, policy, is_organic=True).next_state is TaskState.DELAYED
    assert decide_after_offers(0, 0, 3, DelayPolicy(), is_organic=False).next_state is TaskState.DELAYED


def test_delay_policy_is_validated():
    with pytest.raises(ValueError, match="min_acceptances"):
        DelayPolicy(min_acceptances=0)
    with pytest.raises(ValueError, match="c_hours"):
        DelayPolicy(c_hours=-1)
    with pytest.raises(ValueError, match="max_attempts"):
        DelayPolicy(max_attempts=-1)


# --- task states ---------------------------------------------------------------------

S = TaskState
HAPPY_PATH = [S.PENDING, S.PREPARING_DATA, S.LOOKING_FOR_MINERS, S.TRAINING, S.PREEVALUATION, S.EVALUATING, S.SCORED]
LIVE = [S.PENDING, S.PREPARING_DATA, S.LOOKING_FOR_MINERS, S.DELAYED, S.TRAINING, S.PREEVALUATION, S.EVALUATING]
# Written out by hand from SPEC "Task states" (not derived from the table under test).
EXPECTED_LEGAL = (
    {(a, b) for a, b in zip(HAPPY_PATH, HAPPY_PATH[1:])}
    | {(S.LOOKING_FOR_MINERS, S.DELAYED), (S.DELAYED, S.LOOKING_FOR_MINERS), (S.EVALUATING, S.PREEVALUATION)}
    | {(s, S.FAILED) for s in LIVE}
    | {(s, S.CANCELLED) for s in LIVE}
)


def test_every_pair_of_states_is_legal_exactly_when_expected():
    for old in TaskState:
        for new in TaskState:
            if (old, new) in EXPECTED_LEGAL:
                check_transition(old, new)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition(old, new)


def test_terminal_states_have_no_way_out():
    assert TERMINAL_STATES == {S.SCORED, S.FAILED, S.CANCELLED}
    for s in TERMINAL_STATES:
        assert ALLOWED_TRANSITIONS[s] == frozenset()


def test_illegal_transition_error_names_the_states():
    with pytest.raises(
        IllegalTransition, match=r"PENDING -> TRAINING \(allowed from PENDING: CANCELLED, FAILED, PREPARING_DATA\)"
    ):
        check_transition(S.PENDING, S.TRAINING)
    with pytest.raises(IllegalTransition, match="SCORED is terminal"):
        check_transition(S.SCORED, S.FAILED)
    with pytest.raises(ValueError):  # IllegalTransition is a ValueError for generic handlers
        check_transition(S.TRAINING, S.TRAINING)
