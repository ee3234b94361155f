"""The loop that moves the pending scores onto the backend, until they are set.

Each attempt: read the pending ScoresUpdated, sync the backend's view (hotkey → uid,
V_trust, max weight share, rate limit), compute W_chain = S_final · V_trust normalised and
quantised (logic.chain_weights), set it, then record the set and publish
`gradients.weights.set` in one transaction (outbox); if that record fails, only the record is
retried (the vector is never set twice). A failure keeps the pending entry and
retries with exponential backoff (initial · 2^(failures−1), capped); a rate limit waits the
blocks it names; new scores wake the loop unless it is backing off.

Only one chain_bridge replica sets weights at a time: the loop holds a Redis lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from gradients.runtime import Store, telemetry
from gradients.runtime.loops import stop_if_cancelling
from gradients.runtime.outbox import Outbox
from gradients.v1 import events_pb2 as ev
from services.chain_bridge.backends import ChainUnavailable, RateLimited, WeightsBackend, WeightsSubmission
from services.chain_bridge.logic import chain_weights
from services.chain_bridge.state import WeightsState, scores_at_us

log = logging.getLogger(__name__)

_RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end
"""
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""


def retry_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff: initial, 2·initial, 4·initial, … capped at max (failures ≥ 1)."""
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    return min(max_s, initial_s * 2.0 ** min(failures - 1, 62))


@dataclass(frozen=True)
class SetterOptions:
    version_key: int
    retry_initial_s: float
    retry_max_s: float
    idle_check_s: float
    lease_s: float


@dataclass
class SetterStatus:
    reachable: bool | None = None  # None until the first attempt
    last_error: str = ""
    attempts: int = 0
    failures: int = 0  # consecutive
    last_attempt_at: float = 0.0


class Lease:
    """A Redis lease naming the one replica allowed to set weights."""

    def __init__(self, store: Store, ttl_s: float):
        self.store = store
        self.key = store.key("chain-setter-lease")
        self.owner = uuid.uuid4().hex
        self.ttl_ms = int(ttl_s * 1000)

    async def hold(self) -> bool:
        redis = self.store.redis
        if await redis.set(self.key, self.owner, nx=True, px=self.ttl_ms):
            return True
        return bool(await redis.eval(_RENEW_LUA, 1, self.key, self.owner, self.ttl_ms))

    async def release(self) -> None:
        try:
            await self.store.redis.eval(_RELEASE_LUA, 1, self.key, self.owner)
        except Exception:
            pass


class WeightSetter:
    def __init__(
        self, store: Store, backend: WeightsBackend, state: WeightsState, outbox: Outbox | None, options: SetterOptions
    ):
        self.backend = backend
        self.state = state
        self.outbox = outbox
        self.options = options
        self.lease = Lease(store, options.lease_s)
        self.status = SetterStatus()
        self._wake = asyncio.Event()
        self._holder = False
        self._unrecorded: tuple[ev.ScoresUpdated, ev.WeightsSet] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await self._renew_lease()
        keeper = asyncio.create_task(self._keep_lease(), name="chain-setter-lease")
        next_try = 0.0  # monotonic time of the next attempt
        try:
            while True:
                timeout = max(0.0, min(next_try - time.monotonic(), self.options.idle_check_s))
                await self._sleep_unless_woken(timeout)
                stop_if_cancelling()  # the SDK's and our chain calls' wait_for may swallow one
                if self._wake.is_set():
                    self._wake.clear()
                    if self.status.failures == 0:
                        next_try = 0.0  # new scores: try now, unless backing off
                if not self._holder:
                    continue  # another replica sets weights; the lease keeper wakes us if that changes
                if time.monotonic() < next_try:
                    continue
                next_try = time.monotonic() + await self.attempt()
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await self.lease.release()

    async def _renew_lease(self) -> None:
        was = self._holder
        try:
            self._holder = await self.lease.hold()
        except Exception as exc:  # Redis briefly away: do not set weights without the lease
            log.warning("chain setter lease: %s", exc)
            self._holder = False
        if self._holder and not was:
            self.wake()

    async def _keep_lease(self) -> None:
        # Renewed independently of attempts, so a long chain call never outlives the lease and a
        # replica killed without releasing it is replaced within one lease period.
        while True:
            await asyncio.sleep(self.lease.ttl_ms / 3000)
            await self._renew_lease()

    async def _sleep_unless_woken(self, timeout: float) -> None:
        # asyncio.wait, not wait_for: it never swallows a cancellation of this task.
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()

    async def attempt(self) -> float:
        """One try; returns the seconds until the next one."""
        if self._unrecorded is not None:  # a set went through; only its record is missing
            return await self._record()
        try:
            update = await self.state.pending()
        except Exception as exc:
            log.warning("cannot read pending weights: %s", exc)
            return self.options.idle_check_s
        if update is None:
            return self.options.idle_check_s
        try:
            traces = await self.state.pending_traces()
        except Exception:  # tracing is best effort; the weights are not
            traces = []
        with self._span(update, traces):
            return await self._attempt(update)

    def _span(self, update: ev.ScoresUpdated, traces: list[str]):
        """One set joins the scores of every task folded into the pending vector: its span continues
        the trace of the newest update (so a task's trace reaches gradients.weights.set) and links
        the others."""
        contexts = [telemetry.extract_context({"traceparent": t}) for t in traces]
        links = [
            Link(span_context)
            for ctx in contexts[:-1]
            if (span_context := trace.get_current_span(ctx).get_span_context()).is_valid
        ]
        return telemetry.tracer("gradients.chain_bridge").start_as_current_span(
            f"set_weights {self.backend.name}",
            context=contexts[-1] if contexts else None,
            kind=SpanKind.CLIENT,
            links=links,
            attributes={"weights.scores_digest": update.digest, "weights.joined_updates": len(traces)},
        )

    async def _attempt(self, update: ev.ScoresUpdated) -> float:
        st = self.status
        st.attempts += 1
        st.last_attempt_at = time.time()
        try:
            view = await self.backend.view([s.miner_hotkey for s in update.scores])
            if view.blocks_to_wait > 0:
                raise RateLimited(
                    f"weights rate limit: {view.blocks_to_wait} blocks to wait", view.blocks_to_wait * view.block_time_s
                )
            finals = {s.miner_hotkey: max(0.0, s.final_score) for s in update.scores}
            weights = chain_weights(finals, view.hotkey_to_uid, view.trust, view.max_weight_limit)
            if weights.is_empty:
                await self.state.drop(update)
                st.reachable, st.failures = True, 0
                st.last_error = f"scores {update.digest[:16]}: no registered miner has a positive weight; nothing set"
                log.warning("%s", st.last_error)
                return 0.0
            submission = WeightsSubmission(weights, self.options.version_key, update.digest, scores_at_us(update))
            receipt = await self.backend.set_weights(submission)
        except RateLimited as exc:
            st.reachable, st.last_error = True, str(exc)
            log.info("%s; retrying in %.1fs", exc, exc.wait_s)
            return max(exc.wait_s, 0.1)
        except Exception as exc:
            st.failures += 1
            st.reachable = not isinstance(exc, ChainUnavailable)
            st.last_error = f"{type(exc).__name__}: {exc}"
            delay = retry_delay(st.failures, self.options.retry_initial_s, self.options.retry_max_s)
            log.warning(
                "setting weights on %s failed (%d in a row, pending kept; retry in %.1fs): %s",
                self.backend.name,
                st.failures,
                delay,
                st.last_error,
            )
            return delay
        done = ev.WeightsSet(
            uids=list(weights.u16_uids),
            weights_u16=list(weights.u16_values),
            backend=self.backend.name,
            sequence=receipt.sequence,
            version_key=self.options.version_key,
            scores_digest=update.digest,
        )
        log.info(
            "weights set on %s: sequence %d, %d uids (%s), scores %s",
            self.backend.name,
            receipt.sequence,
            len(weights.u16_uids),
            receipt.detail,
            update.digest[:16],
        )
        self._unrecorded = (update, done)
        st.reachable = True
        return await self._record()

    async def _record(self) -> float:
        """Record the set just made (last weights, WeightsSet via the outbox, pending cleared).
        Until that succeeds the set is kept here and only the record is retried: the pending
        entry is still there, and trying it again would set the same vector twice."""
        st = self.status
        update, done = self._unrecorded
        try:
            await self.state.record_set(update, done, self.outbox)
        except Exception as exc:
            st.failures += 1
            st.last_error = f"weights set (sequence {done.sequence}) but not recorded yet: {type(exc).__name__}: {exc}"
            delay = retry_delay(st.failures, self.options.retry_initial_s, self.options.retry_max_s)
            log.warning("%s; retrying the record in %.1fs", st.last_error, delay)
            return delay
        self._unrecorded = None
        if self.outbox is not None:
            try:
                await self.outbox.flush()
            except Exception as exc:  # the flush loop retries
                log.warning("WeightsSet %d stored, publication deferred: %s", done.sequence, exc)
        st.reachable, st.failures, st.last_error = True, 0, ""
        return 0.0  # a newer pending vector may be waiting
