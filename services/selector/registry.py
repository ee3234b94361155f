"""The miner registry in Redis: who has connected, who is connected now, daily participation
and the average quality score s_i of §3.2.

Keys (all under the mesh namespace):
- `miner:<hotkey>` hash: uid, last_seen, part_day (UTC date of the last participation),
  score_sum / score_count (task scores, eq 11), final_score (S_final, eq 15);
- `miner-index` set of hotkeys;
- `gateway-session:<hotkey>`: the id of the miner's open OpenSession stream, with a TTL the
  session refreshes; a key that expired means its replica died without closing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio.client import Pipeline

from gradients.runtime import Store
from gradients.v1 import common_pb2 as pb
from services.selector.logic import MinerStanding

# Keep the later of two participation days (ISO dates compare as strings).
_MARK_DAY = """
local current = redis.call('HGET', KEYS[1], 'part_day')
if (not current) or current < ARGV[1] then redis.call('HSET', KEYS[1], 'part_day', ARGV[1]) end
return 1
"""
# Refresh or delete the session key only while it still names this session.
_REFRESH_SESSION = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_CLOSE_SESSION = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def utc_day(at: float | None = None) -> str:
    """The UTC calendar day of `at` (epoch seconds; now when None): participation resets at 00:00 UTC."""
    return datetime.fromtimestamp(time.time() if at is None else at, tz=UTC).date().isoformat()


@dataclass(frozen=True)
class MinerRecord:
    hotkey: str
    uid: int
    connected: bool
    took_part_today: bool
    avg_quality_score: float | None
    final_score: float | None

    def to_proto(self) -> pb.Miner:
        return pb.Miner(
            hotkey=self.hotkey,
            uid=self.uid,
            connected=self.connected,
            took_part_today=self.took_part_today,
            avg_quality_score=self.avg_quality_score or 0.0,
        )

    def standing(self) -> MinerStanding:
        return MinerStanding(self.hotkey, self.uid, self.took_part_today, self.avg_quality_score)


class MinerRegistry:
    def __init__(self, store: Store, session_ttl_s: float):
        self.store = store
        self.redis = store.redis
        self.session_ttl_ms = int(session_ttl_s * 1000)
        self._refresh = self.redis.register_script(_REFRESH_SESSION)
        self._close = self.redis.register_script(_CLOSE_SESSION)

    def miner_key(self, hotkey: str) -> str:
        return self.store.key("miner", hotkey)

    @property
    def index_key(self) -> str:
        return self.store.key("miner-index")

    def session_key(self, hotkey: str) -> str:
        return self.store.key("gateway-session", hotkey)

    # ---- sessions -----------------------------------------------------------------------

    async def seen(self, hotkey: str, uid: int) -> None:
        """An authenticated call from `hotkey`: remember it (and its current uid)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.miner_key(hotkey), mapping={"uid": uid, "last_seen": f"{time.time():.3f}"})
            pipe.sadd(self.index_key, hotkey)
            await pipe.execute()

    async def open_session(self, hotkey: str, session_id: str) -> None:
        """Route offers for `hotkey` to this session (the newest session of a hotkey wins)."""
        await self.redis.set(self.session_key(hotkey), session_id, px=self.session_ttl_ms)

    async def refresh_session(self, hotkey: str, session_id: str) -> bool:
        """Keep the session alive; False when a newer session replaced it (or it expired)."""
        return bool(await self._refresh(keys=[self.session_key(hotkey)], args=[session_id, self.session_ttl_ms]))

    async def close_session(self, hotkey: str, session_id: str) -> None:
        await self._close(keys=[self.session_key(hotkey)], args=[session_id])

    async def session_of(self, hotkey: str) -> str | None:
        raw = await self.redis.get(self.session_key(hotkey))
        return None if raw is None else raw.decode()

    # ---- participation and scores (queued on the caller's transaction) ---------------------

    def mark_took_part(self, pipe: Pipeline, hotkey: str, day: str) -> None:
        # EVAL (not a registered Script): queued synchronously on the caller's MULTI pipeline.
        pipe.eval(_MARK_DAY, 1, self.miner_key(hotkey), day)
        pipe.sadd(self.index_key, hotkey)

    def add_task_score(self, pipe: Pipeline, hotkey: str, task_score: float) -> None:
        pipe.hincrbyfloat(self.miner_key(hotkey), "score_sum", task_score)
        pipe.hincrby(self.miner_key(hotkey), "score_count", 1)
        pipe.sadd(self.index_key, hotkey)

    def set_final_score(self, pipe: Pipeline, hotkey: str, final_score: float) -> None:
        pipe.hset(self.miner_key(hotkey), "final_score", repr(float(final_score)))
        pipe.sadd(self.index_key, hotkey)

    async def final_score(self, hotkey: str) -> float | None:
        raw = await self.redis.hget(self.miner_key(hotkey), "final_score")
        return None if raw is None else float(raw)

    # ---- reading ----------------------------------------------------------------------------

    async def miners(
        self, uid_of: Callable[[str], int | None] | None = None, today: str | None = None
    ) -> list[MinerRecord]:
        """Every known miner, by hotkey. `uid_of` (the auth policy) drops miners no longer allowed
        and supplies current uids."""
        today = today or utc_day()
        hotkeys = sorted(h.decode() for h in await self.redis.smembers(self.index_key))
        if not hotkeys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for hotkey in hotkeys:
                pipe.hgetall(self.miner_key(hotkey))
                pipe.exists(self.session_key(hotkey))
            replies = await pipe.execute()
        records = []
        for i, hotkey in enumerate(hotkeys):
            fields = {k.decode(): v.decode() for k, v in replies[2 * i].items()}
            uid = uid_of(hotkey) if uid_of is not None else int(fields.get("uid", -1))
            if uid is None or uid < 0:
                continue
            count = int(fields.get("score_count", 0))
            avg = float(fields["score_sum"]) / count if count > 0 else None
            final = float(fields["final_score"]) if "final_score" in fields else None
            records.append(
                MinerRecord(
                    hotkey=hotkey,
                    uid=uid,
                    connected=bool(replies[2 * i + 1]),
                    took_part_today=fields.get("part_day") == today,
                    avg_quality_score=avg,
                    final_score=final,
                )
            )
        return records

    async def connected_standings(self, uid_of: Callable[[str], int | None] | None = None) -> list[MinerStanding]:
        return [r.standing() for r in await self.miners(uid_of) if r.connected]
