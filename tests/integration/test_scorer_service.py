"""scorer against real NATS and Redis: EvalCompleted events in, scores, events and the
auditor's replay out.

The eval worker is played by publishing the EvalCompleted events it publishes (the contract
in events.proto); the expected scores are computed independently from those same events with
the pure functions of services/scorer/logic.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from gradients.commands.scores import replay_from_url
from gradients.runtime import EventBus, ServiceHost, Store, events
from gradients.runtime.bus import wait_for
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from gradients.v1 import scorer_pb2 as sc
from gradients.v1 import scorer_pb2_grpc as sc_grpc
from services.scorer.conversion import (
    micros_to_iso,
    micros_to_seconds,
    submission_results,
    task_info,
    timestamp_to_micros,
)
from services.scorer.logic import replay, score_task
from services.scorer.repository import ScorerRepository
from services.scorer.scoring_config import DAY_S
from services.scorer.scoring_config import DEFAULT_SCORING_CONFIG as CFG
from services.scorer.service import SPEC

ROOT = Path(__file__).resolve().parents[2]
FAST = {"GRADIENTS_SCORER_REFRESH_S": "0", "GRADIENTS_SCORER_TICK_S": "0.2"}
MINERS = [f"5Miner{i:02d}" for i in range(9)]


def make_events(n: int, seed: int, now_s: float) -> list[ev.EvalCompleted]:
    """n tasks over the last ~8 days (a few outside the 7-day window), 3–8 miners each, random
    losses, some failed submissions and one exact copy (eq 9)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        miners = rng.sample(MINERS, rng.randint(3, 8))
        results = []
        for seq, hk in enumerate(miners):
            if rng.random() < 0.1:
                results.append(
                    pb.EvaluationResult(
                        miner_hotkey=hk, ok=False, failure_reason="pickled code in upload", upload_seq=seq
                    )
                )
                continue
            per_test = [rng.uniform(0.4, 2.5) for _ in range(8)]
            per_synth = [rng.uniform(0.4, 2.5) for _ in range(5)]
            lt, ls = sum(per_test) / 8, sum(per_synth) / 5
            results.append(
                pb.EvaluationResult(
                    miner_hotkey=hk,
                    ok=True,
                    loss_test=lt,
                    loss_synth=ls,
                    loss_weighted=0.7 * lt + 0.3 * ls,
                    upload_seq=seq,
                    per_example_test=per_test,
                    per_example_synth=per_synth,
                )
            )
        if k == 7 and results[0].ok:  # a later upload copying the first one's losses exactly
            copy = pb.EvaluationResult()
            copy.CopyFrom(results[0])
            copy.miner_hotkey, copy.upload_seq = "5Copycat", 99
            results.append(copy)
        event = ev.EvalCompleted(
            task_id=f"task-{k:03d}",
            type=pb.INSTRUCT_TEXT,
            results=results,
            worker="w1",
            base_model_params_b=rng.choice([0.5, 1.5, 7.0]),
            hours=rng.choice([1.0, 3.0, 6.0]),
            ok=True,
        )
        event.completed_at.FromNanoseconds(int((now_s - rng.uniform(0.0, 8.0) * DAY_S) * 1e9))
        out.append(event)
    return out


@pytest.fixture
async def scorer(mesh_env):
    env = dict(mesh_env, **FAST)
    host = await ServiceHost.start(SPEC, env=env)
    channel = grpc.aio.insecure_channel(host.address)
    bus = await EventBus.connect(env["GRADIENTS_NATS_URL"], "test-driver")
    store = Store.from_url(env["GRADIENTS_REDIS_URL"])
    yield host, sc_grpc.ScorerStub(channel), bus, ScorerRepository(store), env
    await store.close()
    await bus.stop(1)
    await channel.close()
    await host.stop(1)


async def drain(sub, timeout: float = 0.5) -> list:
    got = []
    while True:
        try:
            msgs = await sub.fetch(100, timeout=timeout)
        except Exception:
            return got
        for m in msgs:
            await m.ack()
        got.extend(msgs)


async def test_fifty_tasks_scored_leaderboard_and_replay_digest(scorer):
    host, stub, bus, repo, env = scorer
    updates_sub = await bus.js.pull_subscribe(events.SCORES_UPDATED, durable="test-scores-updated")
    scored_sub = await bus.js.pull_subscribe(events.TASK_SCORED, durable="test-task-scored")
    started = time.monotonic()
    batch = make_events(50, seed=11, now_s=time.time())
    for event in batch:
        await bus.publish(events.EVAL_COMPLETED, event, msg_id=f"eval:{event.task_id}")
    failed_job = ev.EvalCompleted(task_id="task-broken", ok=False, failure_reason="base model did not load")
    await bus.publish(events.EVAL_COMPLETED, failed_job, msg_id="eval:task-broken")

    async def all_scored() -> bool:
        latest = await repo.latest()
        return latest is not None and latest[0].log_length == 50

    assert await wait_for(all_scored, 30), "the scorer did not score the 50 tasks"
    elapsed = time.monotonic() - started
    outbox_key = host.ctx.components.keeper.outbox.key

    async def all_published() -> bool:
        return not await repo.store.redis.hlen(outbox_key)

    assert await wait_for(all_published, 10)
    computation, last_update = await repo.latest()
    print(f"\n50 tasks scored in {elapsed:.2f}s ({50 / elapsed:.0f} tasks/s incl. publishing)")

    # Events: one TaskScored per task, one ScoresUpdated per task; the newest carries the live digest.
    scored = [ev.TaskScored.FromString(m.data) for m in await drain(scored_sub)]
    assert sorted(s.task_id for s in scored) == sorted(e.task_id for e in batch)
    assert all(s.scoring_config_version == CFG.version for s in scored)
    updates = [ev.ScoresUpdated.FromString(m.data) for m in await drain(updates_sub)]
    assert len(updates) == 50
    newest = max(updates, key=lambda u: timestamp_to_micros(u.at))
    assert newest.digest == computation.digest == last_update.digest

    # Independent expectation: the same events through the pure functions, at the live "now".
    now = computation.now
    expected = replay(
        [score_task(task_info(e, CFG), submission_results(e), CFG).to_scored_task() for e in batch], now, CFG
    )
    assert expected.digest == computation.digest

    board = await stub.GetLeaderboard(sc.GetLeaderboardRequest())
    assert board.digest == computation.digest and board.scoring_config_version == CFG.version
    finals = [e.final_score for e in board.entries]
    assert finals == sorted(finals, reverse=True) and finals[0] > 0
    assert {e.miner_hotkey: e.final_score for e in board.entries} == expected.final_by_hotkey()
    assert len((await stub.GetLeaderboard(sc.GetLeaderboardRequest(limit=3))).entries) == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetLeaderboard(sc.GetLeaderboardRequest(limit=-1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in err.value.details()

    # One task's result: ranks, flags, the copy marked as a duplicate.
    copied = await stub.GetTaskResult(sc.GetTaskResultRequest(task_id="task-007"))
    again = score_task(task_info(batch[7], CFG), submission_results(batch[7]), CFG)
    assert [(s.miner_hotkey, s.rank, s.adjusted, s.suspicious) for s in copied.scores] == [
        (m.miner_hotkey, m.rank, m.adjusted, m.suspicious) for m in again.miners
    ]
    assert len(copied.results) == len(batch[7].results) and copied.task_weight == again.task_weight
    copycat = next(s for s in copied.scores if s.miner_hotkey == "5Copycat")
    assert copycat.duplicate and copycat.rank == 0 and "duplicate of" in copycat.reason
    assert 0.0 <= copied.rank1_confidence <= 1.0
    for bad, code in (("task-broken", grpc.StatusCode.NOT_FOUND), ("", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTaskResult(sc.GetTaskResultRequest(task_id=bad))
        assert err.value.code() == code and err.value.details()

    # Why the leader leads: per-window sums of its tasks' adjusted scores.
    top = board.entries[0]
    why = await stub.ExplainMinerScore(sc.ExplainMinerScoreRequest(miner_hotkey=top.miner_hotkey))
    assert [w.window for w in why.windows] == ["1d", "3d", "7d"]
    assert why.final_score == top.final_score and why.temporal_score == top.temporal_score
    for w in why.windows:
        assert w.raw_sum == pytest.approx(sum(t.adjusted for t in w.tasks))
    assert len(why.windows[2].tasks) >= len(why.windows[0].tasks)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ExplainMinerScore(sc.ExplainMinerScoreRequest(miner_hotkey="5Nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # The auditor's replay, as a function and as the CLI: every task recomputed, same digest.
    t0 = time.monotonic()
    report = await replay_from_url(env["GRADIENTS_REDIS_URL"], "gm", None)
    replay_s = time.monotonic() - t0
    assert report.mismatches == () and report.recomputed == 50 and report.now == now
    assert report.digest == computation.digest and report.matches_live
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradients.commands.scores",
            "replay",
            "--redis-url",
            env["GRADIENTS_REDIS_URL"],
            "--now",
            micros_to_iso(computation.now_us),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["digest"] == computation.digest and out["matches_live"] is True and out["entries"] == 50
    assert out["now"] == micros_to_seconds(computation.now_us)
    print(f"replay of 50 tasks: {replay_s * 1000:.0f} ms in-process")

    # Windows age: a refresh recomputes at a later "now" (new digest, same 50 tasks); the replay
    # matches it, and an earlier computation can still be replayed at its own "now".
    refreshed = await host.ctx.components.keeper.refresh(0.0)
    assert refreshed.trigger == "refresh" and refreshed.log_length == 50 and refreshed.now_us > computation.now_us
    assert (await stub.GetLeaderboard(sc.GetLeaderboardRequest())).digest == refreshed.digest != computation.digest
    assert (await replay_from_url(env["GRADIENTS_REDIS_URL"], "gm", None)).matches_live
    earlier = await replay_from_url(env["GRADIENTS_REDIS_URL"], "gm", computation.now)
    assert earlier.live == computation and earlier.digest == computation.digest
    mid = (await repo.computations())[24]  # the computation made when the 25th task was scored
    partial = await replay_from_url(env["GRADIENTS_REDIS_URL"], "gm", mid.now)
    assert partial.entries == 25 and partial.matches_live


async def test_duplicate_and_redelivered_eval_completed_score_once(scorer):
    host, stub, bus, repo, env = scorer
    scored_sub = await bus.js.pull_subscribe(events.TASK_SCORED, durable="test-task-scored-once")
    keeper = host.ctx.components.keeper
    real_flush = keeper.outbox.flush
    crashes = []

    async def flush_failing_once():
        # Fault injection: the first publication attempt dies after the score was stored, as a
        # process killed between its Redis transaction and its publish would.
        if not crashes:
            crashes.append(1)
            raise ConnectionError("injected: NATS lost right after the score was stored")
        return await real_flush()

    keeper.outbox.flush = flush_failing_once
    event = make_events(1, seed=5, now_s=time.time())[0]
    await bus.publish(events.EVAL_COMPLETED, event, msg_id=f"eval:{event.task_id}")
    # The same result again under other message ids (a re-run job, a replayed stream).
    await bus.publish(events.EVAL_COMPLETED, event, msg_id=f"eval:{event.task_id}:again")
    await bus.publish(events.EVAL_COMPLETED, event, msg_id=f"eval:{event.task_id}:third")

    async def published() -> bool:
        return await repo.result(event.task_id) is not None and not await keeper.store.redis.hlen(keeper.outbox.key)

    assert await wait_for(published, 15)
    await asyncio.sleep(1.0)  # give redeliveries time to (not) score again
    assert crashes == [1]
    assert await repo.log_length() == 1
    assert len(await repo.computations()) == 1
    msgs = [ev.TaskScored.FromString(m.data) for m in await drain(scored_sub)]
    assert [m.task_id for m in msgs] == [event.task_id]


async def test_one_valid_submission_has_no_confidence_and_the_baseline_is_ignored(scorer):
    host, stub, bus, repo, env = scorer
    scored_sub = await bus.js.pull_subscribe(events.TASK_SCORED, durable="test-task-scored-single")
    keeper = host.ctx.components.keeper
    event = ev.EvalCompleted(
        task_id="task-single",
        type=pb.INSTRUCT_TEXT,
        worker="w1",
        base_model_params_b=1.0,
        hours=1.0,
        ok=True,
        results=[
            # L_synth far above L_test: with σ undefined (one credited submission) not suspicious.
            pb.EvaluationResult(
                miner_hotkey=MINERS[0],
                ok=True,
                loss_test=1.0,
                loss_synth=5.0,
                loss_weighted=2.2,
                per_example_test=[1.0, 1.0],
                per_example_synth=[5.0],
                upload_seq=1,
            ),
            pb.EvaluationResult(
                miner_hotkey=MINERS[1], ok=False, failure_reason="pickled code in upload", upload_seq=2
            ),
        ],
        # The base model's own losses (for task_service): not a submission, never scored.
        baseline=pb.EvaluationResult(miner_hotkey="", ok=True, loss_test=3.0, loss_synth=3.0, loss_weighted=3.0),
    )
    event.completed_at.GetCurrentTime()
    await bus.publish(events.EVAL_COMPLETED, event, msg_id=f"eval:{event.task_id}")

    async def published() -> bool:
        return await repo.result(event.task_id) is not None and not await keeper.store.redis.hlen(keeper.outbox.key)

    assert await wait_for(published, 15)
    (msg,) = await drain(scored_sub)
    scored = ev.TaskScored.FromString(msg.data)
    assert not scored.HasField("rank1_confidence")
    assert [(s.miner_hotkey, s.rank, s.task_score, s.suspicious) for s in scored.scores] == [
        (MINERS[0], 1, 3.0, False),
        (MINERS[1], 0, -1.0, False),
    ]
    result = await stub.GetTaskResult(sc.GetTaskResultRequest(task_id="task-single"))
    assert not result.HasField("rank1_confidence")
    assert [r.miner_hotkey for r in result.results] == [MINERS[0], MINERS[1]]
