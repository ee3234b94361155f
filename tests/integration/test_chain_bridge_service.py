"""chain_bridge against real NATS and Redis.

- ledger backend, end to end with the scorer: the ledger's u16 vectors are bittensor's own
  quantisation of the scorer's S_final;
- bittensor backend pointed at a closed local port: it fails cleanly, retries with backoff,
  keeps the pending weights across a restart, and a bridge that can set them does;
- "endpoint back" ordering: a fake backend wrapper (FlakyEndpoint below) refuses N times and
  then delegates to the real ledger backend; the retry loop, persistence, newest-wins and the
  WeightsSet event under test are the real ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from pathlib import Path

import grpc
import pytest
from bittensor.intents.weights import clip_to_max_weight, normalize

from gradients.runtime import EventBus, ServiceHost, Store, events
from gradients.runtime.bus import wait_for
from gradients.runtime.embedded import free_port
from gradients.v1 import chain_bridge_pb2 as cb
from gradients.v1 import chain_bridge_pb2_grpc as cb_grpc
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import scorer_pb2 as sc
from gradients.v1 import scorer_pb2_grpc as sc_grpc
from services.chain_bridge import service as chain_service
from services.chain_bridge.backends import ChainUnavailable, LedgerBackend, make_backend
from services.chain_bridge.setter import retry_delay
from services.scorer.conversion import micros_to_timestamp
from services.scorer.repository import ScorerRepository
from services.scorer.service import SPEC as SCORER_SPEC

CHAIN_SPEC = chain_service.SPEC
FAST_CHAIN = {
    "GRADIENTS_CHAIN_RETRY_INITIAL_S": "0.05",
    "GRADIENTS_CHAIN_RETRY_MAX_S": "0.4",
    "GRADIENTS_CHAIN_IDLE_CHECK_S": "0.2",
    "GRADIENTS_CHAIN_CALL_TIMEOUT_S": "3",
}


def scores_update(digest: str, at_us: int, scores: dict[str, float]) -> ev.ScoresUpdated:
    rows = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return ev.ScoresUpdated(
        scores=[ev.MinerFinalScore(miner_hotkey=hk, final_score=f, temporal_score=f) for hk, f in rows],
        digest=digest,
        at=micros_to_timestamp(at_us),
    )


def eval_event(task_id: str, rng: random.Random, miners: list[str]) -> ev.EvalCompleted:
    results = []
    for seq, hk in enumerate(miners):
        lt, ls = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)
        results.append(
            pb.EvaluationResult(
                miner_hotkey=hk, ok=True, loss_test=lt, loss_synth=ls, loss_weighted=0.7 * lt + 0.3 * ls, upload_seq=seq
            )
        )
    event = ev.EvalCompleted(
        task_id=task_id, type=pb.INSTRUCT_TEXT, results=results, base_model_params_b=1.0, hours=2.0, ok=True
    )
    event.completed_at.FromNanoseconds(int((time.time() - rng.uniform(0, 5 * 86400)) * 1e9))
    return event


async def collect_weights_set(sub, until_sequence: int, timeout: float = 5.0) -> list[ev.WeightsSet]:
    """WeightsSet events from a pull subscription until one carries `until_sequence`."""
    got: list[ev.WeightsSet] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(w.sequence == until_sequence for w in got):
        try:
            msgs = await sub.fetch(100, timeout=0.5)
        except Exception:  # nats TimeoutError: nothing yet
            continue
        for m in msgs:
            await m.ack()
            got.append(ev.WeightsSet.FromString(m.data))
    return got


async def start_chain(env: dict, spec=CHAIN_SPEC):
    host = await ServiceHost.start(spec, env=env)
    channel = grpc.aio.insecure_channel(host.address)
    return host, channel, cb_grpc.ChainBridgeStub(channel)


async def test_ledger_gets_bittensor_quantisation_of_the_scorers_final_scores(mesh_env, tmp_path):
    env = dict(mesh_env, **FAST_CHAIN, GRADIENTS_SCORER_REFRESH_S="0")
    scorer = await ServiceHost.start(SCORER_SPEC, env=env)
    chain, channel, stub = await start_chain(env)
    sc_channel = grpc.aio.insecure_channel(scorer.address)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    weights_sub = await bus.js.pull_subscribe(events.WEIGHTS_SET, durable="test-weights-set")
    store = Store.from_url(env["GRADIENTS_REDIS_URL"])
    try:
        rng = random.Random(4)
        miners = [f"5Hot{i}" for i in range(6)]
        for k in range(12):
            await bus.publish(
                events.EVAL_COMPLETED, eval_event(f"t{k}", rng, rng.sample(miners, 4)), msg_id=f"eval:t{k}"
            )
        repo = ScorerRepository(store)

        async def scored_and_set() -> bool:
            latest = await repo.latest()
            if latest is None or latest[0].log_length < 12:
                return False
            try:
                last = await stub.GetLastWeights(cb.GetLastWeightsRequest())
            except grpc.aio.AioRpcError:
                return False
            return last.scores_digest == latest[0].digest

        assert await wait_for(scored_and_set, 20), "the last scores never reached the ledger"
        board = await sc_grpc.ScorerStub(sc_channel).GetLeaderboard(sc.GetLeaderboardRequest())
        last = await stub.GetLastWeights(cb.GetLastWeightsRequest())

        ledger = LedgerBackend(store, Path(env["GRADIENTS_DATA_DIR"]) / "chain-ledger.jsonl")
        entries = await ledger.entries()
        file_lines = [json.loads(line) for line in ledger.path.read_text().splitlines()]
        assert file_lines == entries  # the JSONL mirror holds exactly the stream
        sequences = [e["sequence"] for e in entries]
        assert sequences == list(range(1, len(entries) + 1))
        assert last.sequence == sequences[-1] and last.backend == "ledger" and last.version_key == 0

        # Deterministic uids (first appearance, sorted within an update), then bittensor's own
        # helpers on S_final: sum-normalise/clip, max-upscale to u16.
        uids = {k.decode(): int(v) for k, v in (await store.redis.hgetall(ledger.uids_key)).items()}
        assert sorted(uids.values()) == list(range(len(uids))) and set(uids) == set(miners)
        positive = sorted((uids[e.miner_hotkey], e.final_score) for e in board.entries if e.final_score > 0)
        expect_uids, expect_u16 = normalize([u for u, _ in positive], clip_to_max_weight([w for _, w in positive], 1.0))
        assert (list(last.uids), list(last.weights_u16)) == (expect_uids, expect_u16)
        assert (entries[-1]["uids"], entries[-1]["weights_u16"]) == (expect_uids, expect_u16)
        assert max(expect_u16) == 65535

        published = await collect_weights_set(weights_sub, until_sequence=sequences[-1])
        assert [w.sequence for w in published] == sequences
        status = await stub.GetChainStatus(cb.GetChainStatusRequest())
        assert (status.backend, status.reachable, status.pending, status.last_sequence) == (
            "ledger",
            True,
            0,
            sequences[-1],
        )
    finally:
        await store.close()
        await bus.stop(1)
        await sc_channel.close()
        await channel.close()
        await chain.stop(1)
        await scorer.stop(1)


def make_wallet(root: Path) -> str:
    import bittensor as bt

    wallet = bt.Wallet("validator", "default", path=str(root))
    wallet.create_new_hotkey(suppress=True)
    return wallet.hotkey.ss58_address


async def test_unreachable_chain_fails_cleanly_retries_and_keeps_pending(mesh_env, tmp_path):
    wallets = tmp_path / "wallets"
    make_wallet(wallets)
    closed_port = free_port()  # bound and released: nothing listens there
    env = dict(
        mesh_env,
        **FAST_CHAIN,
        GRADIENTS_CHAIN_BACKEND="bittensor",
        GRADIENTS_CHAIN_NETWORK=f"ws://127.0.0.1:{closed_port}",
        GRADIENTS_CHAIN_WALLET_PATH=str(wallets),
    )
    chain, channel, stub = await start_chain(env)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    store = Store.from_url(env["GRADIENTS_REDIS_URL"])
    try:
        update = scores_update("d" * 64, 1_767_225_600_000_000, {"5A": 0.9, "5B": 0.3})
        await bus.publish(events.SCORES_UPDATED, update, msg_id="scores:t1")
        setter = chain.ctx.components.setter

        async def retried() -> bool:
            return setter.status.failures >= 4

        assert await wait_for(retried, 15), setter.status
        status = await stub.GetChainStatus(cb.GetChainStatusRequest())
        assert status.backend == "bittensor" and not status.reachable and status.pending == 1
        assert "ChainUnavailable" in status.last_error and str(closed_port) in status.last_error
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetLastWeights(cb.GetLastWeightsRequest())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "pending" in err.value.details()
        # The service itself is fine: healthy, consuming, and the pending vector is stored.
        assert chain.serving
        pending = ev.ScoresUpdated.FromString(await store.redis.get(store.key("chain-pending")))
        assert pending == update
    finally:
        await channel.close()
        await chain.stop(1)

    # Restart: the pending weights survived; a bridge that can reach its backend sets them.
    ledger_env = dict(mesh_env, **FAST_CHAIN)
    chain, channel, stub = await start_chain(ledger_env)
    try:

        async def set_after_restart() -> bool:
            try:
                return (await stub.GetLastWeights(cb.GetLastWeightsRequest())).scores_digest == "d" * 64
            except grpc.aio.AioRpcError:
                return False

        assert await wait_for(set_after_restart, 10)
        assert await store.redis.get(store.key("chain-pending")) is None
    finally:
        await store.close()
        await bus.stop(1)
        await channel.close()
        await chain.stop(1)


class FlakyEndpoint:
    """FAKE chain endpoint for the ordering test: refuses every call (ChainUnavailable) until it
    has failed `down_for` times AND the test reopened it, then delegates to the real ledger
    backend. Records when each attempt came, to check the backoff."""

    def __init__(self, ledger, down_for: int):
        self.ledger = ledger
        self.name = ledger.name
        self.down_for = down_for
        self.reopened = asyncio.Event()
        self.failures = 0
        self.attempt_times: list[float] = []

    async def start(self):
        await self.ledger.start()

    async def close(self):
        await self.ledger.close()

    async def view(self, hotkeys):
        self.attempt_times.append(time.monotonic())
        if self.failures < self.down_for or not self.reopened.is_set():
            self.failures += 1
            raise ChainUnavailable(f"fake endpoint down (refusal {self.failures})")
        return await self.ledger.view(hotkeys)

    async def set_weights(self, submission):
        return await self.ledger.set_weights(submission)


async def test_pending_weights_are_set_once_the_endpoint_is_back_newest_first(mesh_env):
    env = {**mesh_env, **FAST_CHAIN, "GRADIENTS_CHAIN_RETRY_INITIAL_S": "0.1", "GRADIENTS_CHAIN_RETRY_MAX_S": "0.8"}
    flaky: list[FlakyEndpoint] = []

    def flaky_backend(ctx):
        flaky.append(FlakyEndpoint(make_backend(ctx.settings, ctx.store, ctx.mesh.data_dir), down_for=4))
        return flaky[0]

    async def build_with_flaky_backend(ctx):
        return await chain_service.build(ctx, backend_factory=flaky_backend)

    spec = dataclasses.replace(CHAIN_SPEC, on_start=build_with_flaky_backend)
    chain, channel, stub = await start_chain(env, spec)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    weights_sub = await bus.js.pull_subscribe(events.WEIGHTS_SET, durable="test-weights-set")
    store = Store.from_url(env["GRADIENTS_REDIS_URL"])
    try:
        endpoint = flaky[0]
        older = scores_update("a" * 64, 1_000_000, {"5A": 0.9, "5B": 0.1})
        newer = scores_update("b" * 64, 2_000_000, {"5A": 0.2, "5B": 0.8, "5C": 0.4})
        await bus.publish(events.SCORES_UPDATED, older, msg_id="scores:older")
        assert await wait_for(_at_least(endpoint, 2), 10)
        await bus.publish(events.SCORES_UPDATED, newer, msg_id="scores:newer")
        state = chain.ctx.components.state

        async def newer_pending() -> bool:
            p = await state.pending()
            return p is not None and p.digest == newer.digest

        assert await wait_for(newer_pending, 5)
        assert await wait_for(_at_least(endpoint, 4), 10)
        status = await stub.GetChainStatus(cb.GetChainStatusRequest())
        assert not status.reachable and status.pending == 1 and "fake endpoint down" in status.last_error
        endpoint.reopened.set()

        async def set_newer() -> bool:
            last = await state.last()
            return last is not None and last.scores_digest == newer.digest

        assert await wait_for(set_newer, 10)
        published = await collect_weights_set(weights_sub, until_sequence=1)
        assert [(w.sequence, w.scores_digest) for w in published] == [(1, newer.digest)]  # the older never went out
        entries = await endpoint.ledger.entries()
        assert [e["scores_digest"] for e in entries] == [newer.digest]
        assert await state.pending() is None
        # Backoff between refusals: 0.1, 0.2, 0.4, 0.8 s (capped) — at least each nominal delay.
        gaps = [b - a for a, b in zip(endpoint.attempt_times, endpoint.attempt_times[1:])][:3]
        assert all(g >= d * 0.9 for g, d in zip(gaps, (0.1, 0.2, 0.4))), gaps
        # A late redelivery of the older scores changes nothing.
        await bus.publish(events.SCORES_UPDATED, older, msg_id="scores:older:redelivered")
        await asyncio.sleep(0.5)
        assert await state.pending() is None and len(await endpoint.ledger.entries()) == 1
        status = await stub.GetChainStatus(cb.GetChainStatusRequest())
        assert status.reachable and status.pending == 0 and status.last_sequence == 1 and status.last_error == ""
    finally:
        await store.close()
        await bus.stop(1)
        await channel.close()
        await chain.stop(1)


def _at_least(endpoint: FlakyEndpoint, n: int):
    async def check() -> bool:
        return endpoint.failures >= n

    return check


def test_retry_delay_doubles_up_to_the_cap():
    assert [retry_delay(f, 2.0, 30.0) for f in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert retry_delay(10_000, 2.0, 300.0) == 300.0
    with pytest.raises(ValueError, match="failures"):
        retry_delay(0, 2.0, 30.0)


async def test_ledger_uid_file_and_jsonl_resync_from_the_stream(redis_server, tmp_path):
    from gradients.runtime import load_settings
    from services.chain_bridge.backends import WeightsSubmission
    from services.chain_bridge.logic import chain_weights
    from services.chain_bridge.settings import ChainBridgeSettings

    (tmp_path / "uids.json").write_text(json.dumps({"5A": 3, "5B": 7}))
    settings = load_settings(ChainBridgeSettings, {"GRADIENTS_CHAIN_LEDGER_UIDS": str(tmp_path / "uids.json")})
    store = Store.from_url(redis_server.url)
    try:
        ledger = make_backend(settings, store, tmp_path / "data")
        await ledger.start()
        view = await ledger.view(["5A", "5B", "5C"])
        assert view.hotkey_to_uid == {"5A": 3, "5B": 7} and view.trust is None  # 5C: not registered
        w = chain_weights({"5A": 0.6, "5B": 0.2, "5C": 0.9}, view.hotkey_to_uid)
        assert w.u16_uids == (3, 7) and w.u16_values == (65535, 21845)
        for i in range(2):
            await ledger.set_weights(WeightsSubmission(w, 7, f"digest-{i}", i))
        lines = ledger.path.read_text().splitlines()
        assert [json.loads(x)["sequence"] for x in lines] == [1, 2]
        ledger.path.write_text(lines[0] + "\n" + lines[1][:10])  # crash mid-write: a torn last line
        again = make_backend(settings, store, tmp_path / "data")
        await again.start()
        repaired = [json.loads(x) for x in again.path.read_text().splitlines()]
        assert repaired == await again.entries() and [e["version_key"] for e in repaired] == [7, 7]
    finally:
        await store.close()


def test_bittensor_backend_refuses_to_start_without_its_hotkey(tmp_path):
    from gradients.runtime import ConfigError, load_settings
    from services.chain_bridge.settings import ChainBridgeSettings

    settings = load_settings(
        ChainBridgeSettings,
        {"GRADIENTS_CHAIN_BACKEND": "bittensor", "GRADIENTS_CHAIN_WALLET_PATH": str(tmp_path / "none")},
    )
    with pytest.raises(ConfigError, match="GRADIENTS_CHAIN_WALLET"):
        make_backend(settings, Store.from_url("redis://127.0.0.1:1"), tmp_path)
    with pytest.raises(ConfigError) as err:
        load_settings(ChainBridgeSettings, {"GRADIENTS_CHAIN_NETWORK": "mainnet", "GRADIENTS_CHAIN_BACKEND": "chain"})
    assert "GRADIENTS_CHAIN_NETWORK" in str(err.value) and "GRADIENTS_CHAIN_BACKEND" in str(err.value)


async def test_two_replicas_set_each_vector_once_and_one_takes_over(mesh_env):
    env = {**mesh_env, **FAST_CHAIN, "GRADIENTS_CHAIN_LEASE_S": "0.9"}
    first, ch1, stub = await start_chain(env)
    second, ch2, _ = await start_chain(env)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    store = Store.from_url(env["GRADIENTS_REDIS_URL"])
    try:
        for k in range(1, 6):
            update = scores_update(f"{k:064d}", k * 1_000_000, {"5A": 0.5 + k / 10, "5B": 0.5})
            await bus.publish(events.SCORES_UPDATED, update, msg_id=f"scores:{k}")
            await asyncio.sleep(0.15)

        async def last_set() -> bool:
            try:
                return (await stub.GetLastWeights(cb.GetLastWeightsRequest())).scores_digest == f"{5:064d}"
            except grpc.aio.AioRpcError:
                return False

        assert await wait_for(last_set, 10)
        entries = await LedgerBackend(store, Path(env["GRADIENTS_DATA_DIR"]) / "chain-ledger.jsonl").entries()
        digests = [e["scores_digest"] for e in entries]
        assert len(digests) == len(set(digests)) and digests == sorted(digests)  # once each, oldest first
        hosts = (first, second)
        attempts = [h.ctx.components.setter.status.attempts for h in hosts]
        assert min(attempts) == 0, attempts  # only the lease holder ever tried
        # The holder goes away; the other replica takes the lease and sets what comes next.
        holder = hosts[attempts.index(max(attempts))]
        await holder.stop(1)
        await bus.publish(events.SCORES_UPDATED, scores_update(f"{6:064d}", 6_000_000, {"5A": 1.0}), msg_id="scores:6")
        other_stub = cb_grpc.ChainBridgeStub(ch2 if holder is first else ch1)

        async def taken_over() -> bool:
            try:
                return (await other_stub.GetLastWeights(cb.GetLastWeightsRequest())).scores_digest == f"{6:064d}"
            except grpc.aio.AioRpcError:
                return False

        assert await wait_for(taken_over, 10)
    finally:
        await store.close()
        await bus.stop(1)
        for ch in (ch1, ch2):
            await ch.close()
        for host in (first, second):
            if host in ServiceHost.running:
                await host.stop(1)


class RedisRefusesWritesAfterSet:
    """Wraps the real ledger backend: right after a set succeeds, Redis starts refusing writes
    (a real Redis error, NOREPLICAS, from `min-replicas-to-write`), so recording that set fails."""

    def __init__(self, ledger, store: Store):
        self.ledger = ledger
        self.name = ledger.name
        self.store = store
        self.sets = 0

    async def start(self):
        await self.ledger.start()

    async def close(self):
        await self.ledger.close()

    async def view(self, hotkeys):
        return await self.ledger.view(hotkeys)

    async def set_weights(self, submission):
        receipt = await self.ledger.set_weights(submission)
        self.sets += 1
        await self.store.redis.config_set("min-replicas-to-write", 1)
        return receipt


async def test_a_set_whose_record_fails_is_recorded_later_and_never_set_again(mesh_env):
    env = {**mesh_env, **FAST_CHAIN, "GRADIENTS_CHAIN_LEASE_S": "1"}
    wrapped: list[RedisRefusesWritesAfterSet] = []

    def refusing_backend(ctx):
        wrapped.append(RedisRefusesWritesAfterSet(make_backend(ctx.settings, ctx.store, ctx.mesh.data_dir), ctx.store))
        return wrapped[0]

    async def build_with_refusing_backend(ctx):
        return await chain_service.build(ctx, backend_factory=refusing_backend)

    chain, channel, stub = await start_chain(env, dataclasses.replace(CHAIN_SPEC, on_start=build_with_refusing_backend))
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    weights_sub = await bus.js.pull_subscribe(events.WEIGHTS_SET, durable="test-weights-set")
    store = Store.from_url(env["GRADIENTS_REDIS_URL"])
    try:
        update = scores_update("c" * 64, 1_000_000, {"5A": 0.7, "5B": 0.3})
        await bus.publish(events.SCORES_UPDATED, update, msg_id="scores:c")

        async def record_failed() -> bool:
            return "not recorded yet" in (await stub.GetChainStatus(cb.GetChainStatusRequest())).last_error

        assert await wait_for(record_failed, 10), (await stub.GetChainStatus(cb.GetChainStatusRequest())).last_error
        await asyncio.sleep(1.0)  # record retries (and lease renewals) fail meanwhile
        await store.redis.config_set("min-replicas-to-write", 0)
        state = chain.ctx.components.state

        async def recorded() -> bool:
            last = await state.last()
            return last is not None and last.scores_digest == update.digest

        assert await wait_for(recorded, 10)
        assert await state.pending() is None
        assert wrapped[0].sets == 1  # the vector went to the backend once
        entries = await wrapped[0].ledger.entries()
        assert [e["scores_digest"] for e in entries] == [update.digest]
        published = await collect_weights_set(weights_sub, until_sequence=1)
        assert [(w.sequence, w.scores_digest) for w in published] == [(1, update.digest)]
        assert chain.serving and not chain._dead_loops()  # the weights loop survived
        status = await stub.GetChainStatus(cb.GetChainStatusRequest())
        assert status.reachable and status.last_error == "" and status.last_sequence == 1
    finally:
        await store.redis.config_set("min-replicas-to-write", 0)
        await store.close()
        await bus.stop(1)
        await channel.close()
        await chain.stop(1)
