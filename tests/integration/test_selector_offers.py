"""The offer round (docs/flow.md step 4) end to end: real NATS and Redis, the selector in-process,
SDK miners connected over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import time

from gradients.runtime import ServiceHost, events
from gradients.runtime.bus import wait_for
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import selector_pb2 as sel_pb
from gradients.v1 import selector_pb2_grpc as sel_grpc
from miner_sdk.client import Backoff, MinerClient
from services.selector.logic import MinerStanding, rank_miners
from services.selector.service import SPEC
from services.selector.testing import EventCollector, dev_keypair, make_task, publish_state, selector_env

VALIDATOR = dev_keypair("validator")
TIME_SCALE = 10.0  # seconds per nominal hour in these tests


class Miner:
    """An SDK miner that answers every offer according to `behaviour`: accept, decline or silent."""

    def __init__(self, name: str, address: str, behaviour: str, offers_seen: list):
        self.name = name
        self.key = dev_keypair(name)
        self.behaviour = behaviour
        self.client = MinerClient(address, self.key, VALIDATOR.ss58_address)
        self.offers_seen = offers_seen
        self.task = asyncio.create_task(self._run())

    @property
    def hotkey(self) -> str:
        return self.key.ss58_address

    async def _run(self) -> None:
        async for offer in self.client.offers():
            self.offers_seen.append((self.hotkey, offer.task_id))
            if self.behaviour == "accept":
                assert await offer.accept()
            elif self.behaviour == "decline":
                assert await offer.decline()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()


@contextlib.asynccontextmanager
async def selector(mesh_env, names, **settings):
    keys = [dev_keypair(n).ss58_address for n in names]
    env = selector_env(mesh_env, keys, VALIDATOR.ss58_address, **settings)
    env["GRADIENTS_TIME_SCALE"] = str(TIME_SCALE)
    host = await ServiceHost.start(SPEC, env=env)
    try:
        yield host
    finally:
        await host.stop(1)


async def connect(host, names_behaviours, offers_seen) -> list[Miner]:
    miners = [Miner(n, host.address, b, offers_seen) for n, b in names_behaviours]
    await asyncio.gather(*(m.client.wait_connected(10) for m in miners))
    return miners


async def stop_all(miners) -> None:
    await asyncio.gather(*(m.stop() for m in miners))


async def list_miners(host, connected_only=True) -> list[pb.Miner]:
    stub = sel_grpc.SelectorStub(host.ctx.channel(host.address))
    return list((await stub.ListMiners(sel_pb.ListMinersRequest(connected_only=connected_only))).miners)


async def seed_scores(host, bus, scores: dict[str, float]) -> None:
    """Give miners a task score through the real path: a gradients.task.scored event."""
    scored = ev.TaskScored(
        task_id="earlier-task", scores=[pb.Score(miner_hotkey=h, task_score=s) for h, s in scores.items()]
    )
    scored.scored_at.GetCurrentTime()
    await bus.publish(events.TASK_SCORED, scored, msg_id="scored:earlier-task")

    async def applied() -> bool:
        by_key = {m.hotkey: m for m in await list_miners(host, connected_only=False)}
        return all(h in by_key and by_key[h].took_part_today for h in scores)

    assert await wait_for(applied, timeout=10)


async def test_offers_go_highest_weight_first_and_selected_lists_answers(mesh_env, nats_server):
    names = [f"m{i}" for i in range(10)]
    behaviours = {n: "accept" for n in names} | {"m7": "decline", "m8": "silent"}
    # m0-m3 have not taken part today (w = 2.0); the others took part with these scores.
    scores = {"m4": 3.0, "m5": 1.0, "m6": 0.5, "m7": 0.2, "m8": 0.0, "m9": -1.0}
    offers_seen: list = []
    async with selector(mesh_env, names, OFFER_TIMEOUT_S="1", TEXT_POOL_MIN="10", TEXT_POOL_MAX="10") as host:
        miners = await connect(host, [(n, behaviours[n]) for n in names], offers_seen)
        hotkey = {n: dev_keypair(n).ss58_address for n in names}
        assert {m.hotkey for m in await list_miners(host)} == set(hotkey.values())
        await seed_scores(host, host.ctx.bus, {hotkey[n]: s for n, s in scores.items()})
        selected = await EventCollector.start(nats_server.url, events.MINERS_SELECTED)

        task = make_task(hours=2.0)
        started = time.time()
        await publish_state(host.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3)
        event, msg_id = await selected.next(timeout=20)
        elapsed = time.time() - started

        standings = [MinerStanding(hotkey[n], i, n in scores, scores.get(n)) for i, n in enumerate(names)]
        expected_order = [m.hotkey for m in rank_miners(standings, tie_break_salt=task.task_id)]
        assert expected_order[0] == hotkey["m4"]  # score 3.0 beats the first-of-the-day 2.0
        assert [h for h, t in offers_seen if t == task.task_id] == expected_order
        assert msg_id == f"selected:{task.task_id}:0"
        assert event.task_id == task.task_id and event.attempt == 0
        assert list(event.accepted) == [h for h in expected_order if h not in (hotkey["m7"], hotkey["m8"])]
        assert list(event.declined) == [h for h in expected_order if h in (hotkey["m7"], hotkey["m8"])]
        assert not event.enough  # 8 of the 10 drawn
        # The silent miner cost one offer timeout; the deadline is now + hours × time scale.
        assert elapsed >= 1.0
        assert abs(event.deadline.ToSeconds() - (started + 2.0 * TIME_SCALE)) < 3
        # Accepting is taking part today.
        by_key = {m.hotkey: m for m in await list_miners(host)}
        assert all(by_key[h].took_part_today for h in event.accepted)
        assert by_key[hotkey["m4"]].avg_quality_score == 3.0

        await selected.stop()
        await stop_all(miners)


async def test_too_few_miners_gives_a_short_list_and_a_retry_offers_only_new_miners(mesh_env, nats_server):
    offers_seen: list = []
    async with selector(mesh_env, ["a", "b", "c", "d", "e"], OFFER_TIMEOUT_S="1") as host:
        first = await connect(host, [("a", "accept"), ("b", "accept"), ("c", "decline")], offers_seen)
        selected = await EventCollector.start(nats_server.url, events.MINERS_SELECTED)
        task = make_task()
        await publish_state(host.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3)
        event, _ = await selected.next()
        a, b, c, d, e = (dev_keypair(n).ss58_address for n in "abcde")
        assert sorted(event.accepted) == sorted([a, b]) and list(event.declined) == [c]
        assert not event.enough  # pool 8-15, 2 accepted: task_service DELAYs

        # task_service delayed it: attempt 1 carries the miners accepted so far.
        later = await connect(host, [("d", "accept"), ("e", "silent")], offers_seen)
        retry = make_task(task_id=task.task_id, attempt=1, miners=event.accepted, hours=1.25)
        await publish_state(host.ctx.bus, retry, pb.LOOKING_FOR_MINERS, version=6)
        event2, msg_id = await selected.next()
        assert msg_id == f"selected:{task.task_id}:1" and event2.attempt == 1
        assert list(event2.accepted) == [*event.accepted, d]
        assert list(event2.declined) == [e]
        offered = [h for h, t in offers_seen if t == task.task_id]
        assert sorted(offered) == sorted([a, b, c, d, e])  # nobody was offered twice

        await selected.stop()
        await stop_all(first + later)


async def test_redelivered_event_republishes_the_stored_outcome_without_new_offers(mesh_env, nats_server):
    offers_seen: list = []
    async with selector(mesh_env, ["a", "b"], OFFER_TIMEOUT_S="1") as host:
        miners = await connect(host, [("a", "accept"), ("b", "decline")], offers_seen)
        selected = await EventCollector.start(nats_server.url, events.MINERS_SELECTED)
        task = make_task()
        await publish_state(host.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3)
        first, _ = await selected.next()

        # The same event delivered again (here: re-published under another id, as a
        # redelivery after a crash would arrive): no second round, the same outcome.
        await publish_state(host.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3, msg_id="redelivered")
        rounds = host.ctx.components.rounds
        replayed = await rounds.handle(make_task(task_id=task.task_id))
        assert replayed == first
        await asyncio.sleep(1.0)
        assert len([1 for _, t in offers_seen if t == task.task_id]) == 2
        assert selected.queue.empty()  # the re-publication carried the same msg id: de-duplicated

        await selected.stop()
        await stop_all(miners)


async def test_selector_api_lists_miners_and_previews_the_pool(mesh_env):
    async with selector(mesh_env, ["a", "b", "c"]) as host:
        miners = await connect(host, [("a", "accept"), ("b", "accept")], [])
        stub = sel_grpc.SelectorStub(host.ctx.channel(host.address))
        everyone = await list_miners(host, connected_only=False)
        assert {m.hotkey for m in everyone} == {dev_keypair("a").ss58_address, dev_keypair("b").ss58_address}
        assert all(m.connected and not m.took_part_today for m in everyone)
        assert sorted(m.uid for m in everyone) == [0, 1]  # allow-list positions

        reply = await stub.SelectPool(sel_pb.SelectPoolRequest(task_id="t", type=pb.INSTRUCT_TEXT, pool_size=5))
        standings = [MinerStanding(m.hotkey, m.uid, False) for m in everyone]
        assert list(reply.offer_order) == [m.hotkey for m in rank_miners(standings, tie_break_salt="t")]
        excluded = await stub.SelectPool(
            sel_pb.SelectPoolRequest(task_id="t", type=pb.IMAGE, exclude=[dev_keypair("a").ss58_address])
        )
        assert list(excluded.offer_order) == [dev_keypair("b").ss58_address]

        await stop_all(miners)
        # Closing the stream disconnects the miner at once.
        assert await wait_for(lambda: _none_connected(host), timeout=5)


async def _none_connected(host) -> bool:
    return not await list_miners(host)


async def test_a_round_interrupted_mid_way_resumes_without_offering_anyone_twice(mesh_env):
    names = ["a", "b", "c"]
    hotkey = {n: dev_keypair(n).ss58_address for n in names}
    task = make_task()
    standings = [MinerStanding(hotkey[n], i, False) for i, n in enumerate(names)]
    first, second, third = (m.hotkey for m in rank_miners(standings, tie_break_salt=task.task_id))
    name_of = {h: n for n, h in hotkey.items()}
    behaviour = {name_of[first]: "accept", name_of[second]: "silent", name_of[third]: "accept"}
    offers_seen: list = []
    async with selector(mesh_env, names, OFFER_TIMEOUT_S="1", TEXT_POOL_MIN="3", TEXT_POOL_MAX="3") as host:
        miners = await connect(host, list(behaviour.items()), offers_seen)
        rounds = host.ctx.components.rounds
        running = asyncio.create_task(rounds.handle(task))
        # Interrupt while the second miner's offer waits for its (never coming) answer.
        assert await wait_for(lambda: _offered(offers_seen, second), timeout=10)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert await rounds.stored_outcome(task.task_id, 0) is None

        outcome = await rounds.handle(task)  # as the redelivered event would
        assert list(outcome.accepted) == [first, third] and list(outcome.declined) == [second]
        assert sorted(h for h, _ in offers_seen) == sorted([first, second, third])  # one offer each
        await stop_all(miners)


async def _offered(offers_seen, hotkey) -> bool:
    return any(h == hotkey for h, _ in offers_seen)


async def test_offers_reach_miners_connected_to_another_replica(mesh_env, nats_server):
    keys = [dev_keypair(n).ss58_address for n in ("a", "b")]
    env = selector_env(mesh_env, keys, VALIDATOR.ss58_address, OFFER_TIMEOUT_S="2")
    one = await ServiceHost.start(SPEC, env=env)
    two = await ServiceHost.start(SPEC, env=env)
    offers_seen: list = []
    try:
        # Each miner holds its stream on a different replica; the round runs on one of them.
        miners = [
            *await connect(one, [("a", "accept")], offers_seen),
            *await connect(two, [("b", "accept")], offers_seen),
        ]
        selected = await EventCollector.start(nats_server.url, events.MINERS_SELECTED)
        task = make_task()
        await publish_state(one.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3)
        event, _ = await selected.next()
        assert sorted(event.accepted) == sorted(keys) and not event.declined
        await selected.stop()
        await stop_all(miners)
    finally:
        await two.stop(1)
        await one.stop(1)


async def test_the_sdk_reconnects_when_the_gateway_restarts(mesh_env, nats_server):
    env = selector_env(mesh_env, [dev_keypair("a").ss58_address], VALIDATOR.ss58_address, OFFER_TIMEOUT_S="2")
    host = await ServiceHost.start(SPEC, env=env)
    client = MinerClient(
        host.address, dev_keypair("a"), VALIDATOR.ss58_address, backoff=Backoff(initial_s=0.1, max_s=0.5)
    )
    offers: asyncio.Queue = asyncio.Queue()

    async def mine() -> None:
        async for offer in client.offers():
            await offers.put(offer.task_id)
            await offer.accept()

    miner = asyncio.create_task(mine())
    try:
        await client.wait_connected(10)
        port = host.port
        await host.stop(0.5)
        assert await wait_for(lambda: _is_disconnected(client), timeout=5)
        host = await ServiceHost.start(SPEC, env={**env, "GRADIENTS_GRPC_PORT": str(port)})
        await client.wait_connected(10)  # back without any help from the miner's code
        task = make_task()
        await publish_state(host.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3)
        assert await asyncio.wait_for(offers.get(), 10) == task.task_id
    finally:
        miner.cancel()
        await asyncio.gather(miner, return_exceptions=True)
        await client.close()
        await host.stop(1)


async def _is_disconnected(client) -> bool:
    return not client.connected


async def test_an_offer_that_never_reached_the_miner_does_not_exclude_it_from_the_retry(mesh_env, nats_server):
    """Found by the reliability suite (kill -9 of the selector): offers to sessions left stale by the
    restart were undelivered, yet the miners were never offered the task again, so with few miners
    every later attempt had no candidate and the task FAILED for no miners."""
    offers_seen: list = []
    async with selector(mesh_env, ["stale", "live"], OFFER_TIMEOUT_S="1", TEXT_POOL_MIN="2", TEXT_POOL_MAX="2") as host:
        stale = dev_keypair("stale").ss58_address
        registry = host.ctx.components.registry
        live = await connect(host, [("live", "accept")], offers_seen)
        # "stale" looks connected (its session record survived a restart) but no stream serves it.
        await registry.seen(stale, 7)
        await registry.open_session(stale, "session-of-a-dead-selector")
        selected = await EventCollector.start(nats_server.url, events.MINERS_SELECTED)
        task = make_task()
        await publish_state(host.ctx.bus, task, pb.LOOKING_FOR_MINERS, version=3)
        first, _ = await selected.next()
        assert stale in first.declined and not first.enough

        # The miner reconnects for real; the retry offers it the task.
        again = await connect(host, [("stale", "accept")], offers_seen)
        retry = make_task(task_id=task.task_id, attempt=1, miners=first.accepted, hours=1.25)
        await publish_state(host.ctx.bus, retry, pb.LOOKING_FOR_MINERS, version=6)
        second, _ = await selected.next()
        assert stale in second.accepted, (list(second.accepted), list(second.declined))
        await selected.stop()
        await stop_all(live + again)
