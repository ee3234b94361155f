"""Failures of dataset preparation, each carrying a human-readable reason.

The service turns either into a FAILED task state with `reason` as the stated cause.
"""

from __future__ import annotations


class DatasetRejected(Exception):
    """The customer's dataset cannot be used (empty, wrong columns, unreadable files...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GenerationAborted(Exception):
    """Synthetic generation was stopped (a run of consecutive failures, too few rows kept)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
