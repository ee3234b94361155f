"""What the gateway keeps in Redis besides the registry and offers.

- `gateway-task:<task_id>` hash {version, task}: the task as of its latest state_changed event
  (allowed miners, deadline, train split). Written only by a newer version, so redelivered
  or out-of-order events never roll it back.
- `gateway-submission:<task_id>` hash {hotkey: Submission}: each miner's latest upload, stored
  together with its `gradients.submission.received` event (outbox);
  `gateway-upload-seq:<task_id>`: the task's upload counter (upload_seq).
- `miner-results:<hotkey>` hash {"<task_id>:eval": EvaluationResult, "<task_id>:score": Score}
  and `miner-results-recent:<hotkey>` sorted set task_id → time, for GetMyResults.
"""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio.client import Pipeline

from gradients.runtime import Store, events
from gradients.runtime.outbox import Outbox
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import miner_gateway_pb2 as gw

RECORD_TTL_S = 14 * 24 * 3600

_PUT_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if tonumber(ARGV[1]) <= current then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'task', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class GatewayTasks:
    """The gateway's own copy of the tasks it serves (docs/flow.md step 6)."""

    def __init__(self, store: Store):
        self.store = store
        self.redis = store.redis
        self._put = self.redis.register_script(_PUT_IF_NEWER)

    def key(self, task_id: str) -> str:
        return self.store.key("gateway-task", task_id)

    async def put_if_newer(self, task: pb.Task) -> bool:
        return bool(
            await self._put(keys=[self.key(task.task_id)], args=[task.version, task.SerializeToString(), RECORD_TTL_S])
        )

    async def exists(self, task_id: str) -> bool:
        return bool(await self.redis.exists(self.key(task_id)))

    async def get(self, task_id: str) -> pb.Task | None:
        raw = await self.redis.hget(self.key(task_id), "task")
        return None if raw is None else pb.Task.FromString(raw)


def submission_msg_id(s: pb.Submission) -> str:
    return f"submission:{s.task_id}:{s.miner_hotkey}:{s.sha256}"


class Submissions:
    def __init__(self, store: Store, outbox: Outbox):
        self.store = store
        self.redis = store.redis
        self.outbox = outbox

    def key(self, task_id: str) -> str:
        return self.store.key("gateway-submission", task_id)

    def seq_key(self, task_id: str) -> str:
        return self.store.key("gateway-upload-seq", task_id)

    async def latest(self, task_id: str, hotkey: str) -> pb.Submission | None:
        raw = await self.redis.hget(self.key(task_id), hotkey)
        return None if raw is None else pb.Submission.FromString(raw)

    async def next_seq(self, task_id: str) -> int:
        seq = await self.redis.incr(self.seq_key(task_id))
        await self.redis.expire(self.seq_key(task_id), RECORD_TTL_S)
        return int(seq)

    def put(self, pipe: Pipeline, submission: pb.Submission) -> None:
        pipe.hset(self.key(submission.task_id), submission.miner_hotkey, submission.SerializeToString())
        pipe.expire(self.key(submission.task_id), RECORD_TTL_S)

    async def record(self, submission: pb.Submission, trace_parent: str = "") -> None:
        """Store a miner's new latest upload and announce it, in one transaction (outbox)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self.put(pipe, submission)
            self.outbox.add(
                pipe,
                events.SUBMISSION_RECEIVED,
                ev.SubmissionReceived(submission=submission),
                submission_msg_id(submission),
                trace_parent=trace_parent,
            )
            await pipe.execute()
        await self.outbox.flush()

    async def announce_pending(self) -> None:
        """Publish what the outbox still holds (an upload repeated while its event waits there)."""
        await self.outbox.flush()


class MinerResults:
    """Evaluation results and scores the mesh published, per miner, for GetMyResults."""

    def __init__(self, store: Store, kept: int):
        self.store = store
        self.redis = store.redis
        self.kept = kept

    def key(self, hotkey: str) -> str:
        return self.store.key("miner-results", hotkey)

    def recent_key(self, hotkey: str) -> str:
        return self.store.key("miner-results-recent", hotkey)

    def record_eval(self, pipe: Pipeline, task_id: str, result: pb.EvaluationResult, at: float) -> None:
        self._record(pipe, result.miner_hotkey, task_id, "eval", result.SerializeToString(), at)

    def record_score(self, pipe: Pipeline, task_id: str, score: pb.Score, at: float) -> None:
        self._record(pipe, score.miner_hotkey, task_id, "score", score.SerializeToString(), at)

    def _record(self, pipe: Pipeline, hotkey: str, task_id: str, kind: str, payload: bytes, at: float) -> None:
        pipe.hset(self.key(hotkey), f"{task_id}:{kind}", payload)
        pipe.zadd(self.recent_key(hotkey), {task_id: at}, gt=True)  # GT still adds new members

    async def trim(self, hotkey: str) -> None:
        """Forget all but the `kept` newest tasks of a miner."""
        old = await self.redis.zrange(self.recent_key(hotkey), 0, -(self.kept + 1))
        if not old:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for raw in old:
                task_id = raw.decode()
                pipe.hdel(self.key(hotkey), f"{task_id}:eval", f"{task_id}:score")
                pipe.zrem(self.recent_key(hotkey), task_id)
            await pipe.execute()

    async def for_miner(self, hotkey: str, task_id: str = "") -> list[gw.MinerTaskResult]:
        """Newest first; one task when `task_id` is given."""
        if task_id:
            score = await self.redis.zscore(self.recent_key(hotkey), task_id)
            entries = [] if score is None else [(task_id.encode(), score)]
        else:
            entries = await self.redis.zrevrange(self.recent_key(hotkey), 0, self.kept - 1, withscores=True)
        out = []
        for raw_id, at in entries:
            tid = raw_id.decode()
            raw_eval, raw_score = await self.redis.hmget(self.key(hotkey), f"{tid}:eval", f"{tid}:score")
            updated = Timestamp()
            updated.FromNanoseconds(int(at * 1e9))
            item = gw.MinerTaskResult(task_id=tid, updated_at=updated)
            if raw_eval is not None:
                item.result.CopyFrom(pb.EvaluationResult.FromString(raw_eval))
            if raw_score is not None:
                item.score.CopyFrom(pb.Score.FromString(raw_score))
            out.append(item)
        return out


def now_or(ts: Timestamp) -> float:
    """A message's timestamp in seconds, or now when it was not set."""
    return ts.ToNanoseconds() / 1e9 if ts.seconds or ts.nanos else time.time()
