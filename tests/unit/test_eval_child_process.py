"""The evaluation child: a fresh process that starts with the heavy libraries already imported.

Under load every evaluation job starts a child; re-importing torch, transformers and peft in
each one cost about 6 s of CPU per job and was the bottleneck of a loaded CPU worker.
"""

from __future__ import annotations

import os
import sys

import pytest

from services.eval_worker.isolation import ChildLimits, run_in_child

pytestmark = pytest.mark.timeout(120)

HEAVY = ("torch", "transformers", "peft")
LIMITS = ChildLimits(memory_bytes=None, timeout_s=60)

worker_state = {"marker": "fresh"}  # changed in the worker: a child must not see the change


def imported_at_entry() -> list[str]:
    """Which of the heavy libraries the child already had when fn started (this module imports none)."""
    return [name for name in HEAVY if name in sys.modules]


def seen_state() -> tuple[str, int]:
    return worker_state["marker"], os.getpid()


def test_a_child_starts_with_torch_transformers_and_peft_imported():
    outcome = run_in_child(imported_at_entry, (), LIMITS)
    assert outcome.ok, outcome.reason
    assert outcome.value == list(HEAVY)


def test_a_child_inherits_no_state_from_the_worker():
    worker_state["marker"] = "changed in the worker"
    try:
        outcome = run_in_child(seen_state, (), LIMITS)
    finally:
        worker_state["marker"] = "fresh"
    assert outcome.ok, outcome.reason
    marker, pid = outcome.value
    assert marker == "fresh" and pid != os.getpid()
