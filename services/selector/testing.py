"""Helpers for tests and demos of the selector: miner keys, settings env, task events.

Not used by the service itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gradients.runtime import Consumer, Delivery, EventBus, events
from gradients.runtime.auth import dev_keypair  # noqa: F401 - tests import it from here too
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev


def selector_env(
    mesh_env: Mapping[str, str],
    allowed: Iterable[str],
    validator_ss58: str | None,
    **overrides: str,
) -> dict[str, str]:
    """Mesh env plus selector settings; overrides use the setting's suffix, e.g. OFFER_TIMEOUT_S="1"."""
    env = dict(mesh_env)
    env["GRADIENTS_SELECTOR_ALLOWED_HOTKEYS"] = ",".join(allowed)
    if validator_ss58:
        env["GRADIENTS_SELECTOR_VALIDATOR_HOTKEY"] = validator_ss58
    for name, value in overrides.items():
        env[f"GRADIENTS_SELECTOR_{name}"] = str(value)
    return env


def make_task(
    task_type: int = pb.INSTRUCT_TEXT,
    *,
    task_id: str | None = None,
    hours: float = 1.0,
    miners: Iterable[str] = (),
    attempt: int = 0,
    deadline_s: float | None = None,
    train_artifact: str = "",
    train_rows: int = 0,
    base_model: str = "tiny-llama",
) -> pb.Task:
    task = pb.Task(
        task_id=task_id or str(uuid.uuid4()),
        type=task_type,
        base_model=base_model,
        hours=hours,
        delay_attempts=attempt,
        miner_hotkeys=list(miners),
    )
    task.splits.train.artifact = train_artifact
    task.splits.train.sha256 = train_artifact
    task.splits.train.rows = train_rows
    task.splits.schema.extend(["instruction", "output"])
    if deadline_s is not None:
        task.deadline.FromNanoseconds(int(deadline_s * 1e9))
    return task


async def publish_state(bus: EventBus, task: pb.Task, to_state: int, version: int, msg_id: str | None = None) -> None:
    """Announce a transition the way task_service does (msg id state:<task_id>:<version>)."""
    changed = pb.Task()
    changed.CopyFrom(task)
    changed.state = to_state
    changed.version = version
    event = ev.TaskStateChanged(task_id=task.task_id, to_state=to_state, version=version, task=changed)
    event.at.GetCurrentTime()
    await bus.publish(events.TASK_STATE_CHANGED, event, msg_id=msg_id or f"state:{task.task_id}:{version}")


@dataclass
class EventCollector:
    """Collects every event of one subject into a queue (a durable consumer of its own)."""

    bus: EventBus
    subject: str
    durable: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    @classmethod
    async def start(cls, nats_url: str, subject: str) -> EventCollector:
        durable = f"test-{subject.replace('.', '-')}-{uuid.uuid4().hex[:6]}"
        bus = await EventBus.connect(nats_url, durable)
        collector = cls(bus, subject, durable)

        async def handle(event, delivery: Delivery) -> None:
            await collector.queue.put((event, delivery.msg_id))

        await bus.start([Consumer(durable, subject, handle)])
        return collector

    async def next(self, timeout: float = 10.0):
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def stop(self) -> None:
        await self.bus.stop(1)


def deadline_in(seconds: float) -> float:
    return time.time() + seconds
