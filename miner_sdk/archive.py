"""Submission archives, as the validator packs and checks them: `gradients.archive` re-exported.

Kept so miners' `from miner_sdk.archive import pack, safe_extract` goes on working.
"""

from __future__ import annotations

from gradients.archive import (  # noqa: F401
    DEFAULT_MAX_MEMBERS,
    UnsafeArchive,
    check_members,
    pack,
    safe_extract,
    safe_member_name,
)

__all__ = ["DEFAULT_MAX_MEMBERS", "UnsafeArchive", "check_members", "pack", "safe_extract", "safe_member_name"]
