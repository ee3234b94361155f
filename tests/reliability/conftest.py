"""The reliability suite: CI runs the fast subset; `make reliability` runs all of it.

Tests marked `slow` (full-size scenarios) run only with GRADIENTS_RELIABILITY_FULL=1.
"""

from __future__ import annotations

import os

import pytest

FULL = os.environ.get("GRADIENTS_RELIABILITY_FULL", "") not in ("", "0", "false")


def pytest_collection_modifyitems(config, items):
    if FULL:
        return
    skip = pytest.mark.skip(reason="full-size reliability scenario: make reliability (GRADIENTS_RELIABILITY_FULL=1)")
    for item in items:
        if "reliability" in item.keywords and "slow" in item.keywords:
            item.add_marker(skip)
