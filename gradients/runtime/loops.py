"""Periodic background loops: one way to run "do this every N seconds" in a service.

A loop survives what its step raises (logged; the next round retries) and stops when its task is
cancelled, even when the cancellation was swallowed on the way (see `stop_if_cancelling`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def stop_if_cancelling() -> None:
    """Raise CancelledError when the running task has been asked to stop.

    Python 3.11's `wait_for` (inside nats-py's publish, the chain SDK's calls) can swallow a
    cancellation that races a completed call; a loop calls this between steps to stop anyway.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def every(
    interval_s: float, step: Callable[[], Awaitable[object]], *, name: str, immediately: bool = False
) -> None:
    """Run `step` every `interval_s` seconds (first after one interval, or at once when
    `immediately`) until cancelled; a step that fails is logged and retried next round."""
    if not immediately:
        await asyncio.sleep(interval_s)
    while True:
        stop_if_cancelling()
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed (will retry): %s", name, exc)
        await asyncio.sleep(interval_s)
