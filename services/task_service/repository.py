"""Task records in Redis, behind a small typed repository."""

from __future__ import annotations

from gradients.runtime import ProtoRepository, Store
from gradients.v1 import common_pb2 as pb


class TaskRepository(ProtoRepository[pb.Task]):
    def __init__(self, store: Store):
        super().__init__(store, "task", pb.Task)

    def request_key(self, account: str, request_id: str) -> str:
        """Maps a client's idempotency key (per account) to the task it created."""
        return self.store.key("task-request", account, request_id)

    async def many(self, ids: list[str]) -> list[pb.Task]:
        """The tasks of `ids` that exist, in one round trip."""
        if not ids:
            return []
        raws = await self.store.redis.mget([self.key(i) for i in ids])
        return [pb.Task.FromString(r) for r in raws if r is not None]

    def state_index(self, state: int) -> str:
        """Set of task ids currently in `state`."""
        return self.store.key("task-state", pb.TaskState.Name(state))

    @property
    def timers_key(self) -> str:
        """Sorted set of "<kind>:<task_id>" due at a unix time (deadlines, delayed retries)."""
        return self.store.key("task-timers")

    def submissions_key(self, task_id: str) -> str:
        """Hash hotkey -> latest Submission of that miner for the task."""
        return self.store.key("task-submissions", task_id)
