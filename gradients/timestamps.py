"""Time on the bus, computed one fixed way: protobuf Timestamps, whole microseconds, unix seconds.

The scorer records its "now" in whole microseconds and chain_bridge compares those records, and
an auditor's replay must turn the same stored bytes into the same floats as the live service
did, so every service converts through these functions (no I/O).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROS = 1_000_000


def timestamp_seconds(ts: Timestamp) -> float:
    """Unix seconds of a protobuf Timestamp, computed one fixed way (live and replay agree)."""
    return ts.seconds + ts.nanos / 1e9


def micros_to_seconds(now_us: int) -> float:
    """Unix seconds of a whole number of microseconds (a correctly rounded division)."""
    return now_us / MICROS


def micros_to_timestamp(now_us: int) -> Timestamp:
    return Timestamp(seconds=now_us // MICROS, nanos=(now_us % MICROS) * 1000)


def timestamp_to_micros(ts: Timestamp) -> int:
    return ts.seconds * MICROS + ts.nanos // 1000


def micros_to_iso(now_us: int) -> str:
    return (EPOCH + timedelta(microseconds=now_us)).isoformat().replace("+00:00", "Z")


def parse_now(text: str) -> float:
    """`--now` of a replay: unix seconds ("1767225600.25") or ISO-8601 ("2026-01-01T00:00:00Z";
    UTC when no offset is given). ISO times are taken to whole microseconds, the resolution the
    live scorer records its "now" in, so the ISO a replay printed gives back the same float."""
    text = text.strip()
    if not text:
        raise ValueError("now: empty")
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"now: {text!r} is not a finite number of seconds")
        return value
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"now: {text!r} is neither unix seconds nor an ISO-8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return micros_to_seconds((dt - EPOCH) // timedelta(microseconds=1))
