"""A reduced `gradients demo` (2 tasks, 3 miners, tiny models): the whole flow, end to end.

One text task and one image task (the draw is seeded so that both types come up): the image
task's prompts come from the demo's small text model, its images from the tiny diffusers base.

Real processes throughout: embedded NATS and Redis, the six services, three reference
miners, spans exported over OTLP to a receiver on loopback.
"""

from __future__ import annotations

import asyncio

import pytest
from otlp_receiver import ThreadedOtlpReceiver, spans_by_trace

from gradients.demo import Demo, DemoOptions, run_round
from gradients.runtime import EventBus, events
from gradients.v1 import common_pb2 as pb
from services.chain_bridge.logic import chain_weights

SIX = {"task_service", "selector", "dataset_prep", "eval_worker", "scorer", "chain_bridge"}


async def read_all(bus: EventBus, subject: str) -> list:
    sub = await bus.js.subscribe(subject, ordered_consumer=True)
    out = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except Exception:
            break
        out.append(events.message_type(subject).FromString(msg.data))
    await sub.unsubscribe()
    return out


@pytest.mark.timeout(600)
def test_reduced_round_end_to_end(tmp_path):
    with ThreadedOtlpReceiver() as receiver:
        demo = Demo(
            DemoOptions(
                data_dir=tmp_path / "demo",
                miners=3,
                tasks=2,
                time_scale=12.0,
                timeout_s=420,
                types=("instruct", "image"),
                otlp_endpoint=receiver.endpoint,
            )
        )
        try:
            demo.start()
            snap = asyncio.run(run_round(demo))
            stream = asyncio.run(collect(demo.mesh.nats_url))
        finally:
            demo.stop()  # services flush their spans on the way out
        tasks = {t.task_id: t for t in snap.tasks}
        assert len(tasks) == 2 and all(t.state == pb.SCORED for t in tasks.values()), [
            (t.task_id, pb.TaskState.Name(t.state), t.failure_reason) for t in tasks.values()
        ]
        assert sorted(pb.TaskType.Name(t.type) for t in tasks.values()) == ["IMAGE", "INSTRUCT_TEXT"]
        image = next(t for t in tasks.values() if t.type == pb.IMAGE)
        assert image.splits.synth.rows > 0 and list(image.splits.schema) == ["image", "caption"]

        # Every stage's event was seen for every task.
        for subject in (
            events.TASK_CREATED,
            events.DATASET_PREPARED,
            events.MINERS_SELECTED,
            events.EVAL_COMPLETED,
            events.TASK_SCORED,
        ):
            seen = {getattr(m, "task_id", "") or m.task.task_id for m in stream[subject]}
            assert set(tasks) <= seen, subject
        assert {m.submission.task_id for m in stream[events.SUBMISSION_RECEIVED]} == set(tasks)
        assert stream[events.SCORES_UPDATED] and stream[events.WEIGHTS_SET]

        # A score for every valid submission.
        for completed in stream[events.EVAL_COMPLETED]:
            scored = next(s for s in stream[events.TASK_SCORED] if s.task_id == completed.task_id)
            valid = {r.miner_hotkey for r in completed.results if r.ok}
            assert valid and valid <= {s.miner_hotkey for s in scored.scores}

        # The ledger's weights are bittensor's quantisation of S_final.
        last_scores = stream[events.SCORES_UPDATED][-1]
        last_weights = stream[events.WEIGHTS_SET][-1]
        expected = chain_weights({s.miner_hotkey: s.final_score for s in last_scores.scores}, demo.uids)
        assert list(last_weights.uids) == list(expected.u16_uids)
        assert list(last_weights.weights_u16) == list(expected.u16_values)

        # One trace per task, across the services that worked on it.
        traces = spans_by_trace(receiver.spans)
        for task in tasks.values():
            trace_id = task.trace_parent.split("-")[1]
            services = {s.service for s in traces.get(trace_id, [])}
            assert SIX - {"chain_bridge"} <= services, (task.task_id, services)
        assert any(SIX <= {s.service for s in traces.get(t.trace_parent.split("-")[1], [])} for t in tasks.values())


async def collect(nats_url: str) -> dict[str, list]:
    bus = await EventBus.connect(nats_url, "e2e-reader")
    subjects = (
        events.TASK_CREATED,
        events.DATASET_PREPARED,
        events.MINERS_SELECTED,
        events.SUBMISSION_RECEIVED,
        events.EVAL_COMPLETED,
        events.TASK_SCORED,
        events.SCORES_UPDATED,
        events.WEIGHTS_SET,
    )
    out = {subject: await read_all(bus, subject) for subject in subjects}
    await bus.stop(1)
    return out
