"""Where one step joins several tasks, and what spans and log lines say they are about.

- chain_bridge folds the ScoresUpdated of several tasks into one weights set: its span
  continues the newest update's trace and links the others (real Redis, the ledger backend).
- Consumer and producer spans carry task.id / task.type / miner.hotkey taken from the event,
  and JSON log lines written while handling it carry task_id and miner_hotkey.
"""

from __future__ import annotations

import asyncio
import json
import logging

from opentelemetry import trace

from gradients.runtime import Consumer, EventBus, Store, events, telemetry
from gradients.runtime.bus import wait_for
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.chain_bridge.backends import LedgerBackend
from services.chain_bridge.setter import SetterOptions, WeightSetter
from services.chain_bridge.state import WeightsState


def scores(at_s: int, digest: str) -> ev.ScoresUpdated:
    update = ev.ScoresUpdated(
        digest=digest,
        scores=[
            ev.MinerFinalScore(miner_hotkey="hk-a", final_score=0.7),
            ev.MinerFinalScore(miner_hotkey="hk-b", final_score=0.3),
        ],
    )
    update.at.FromSeconds(at_s)
    return update


def task_trace(name: str) -> tuple[str, trace.SpanContext]:
    """A span standing for one task's trace; returns its traceparent and context."""
    with telemetry.tracer("test").start_as_current_span(name) as span:
        headers = telemetry.inject_headers({})
        return headers["traceparent"], span.get_span_context()


async def test_weights_set_continues_newest_task_trace_and_links_the_others(redis_server, span_exporter, tmp_path):
    store = Store.from_url(redis_server.url, namespace="links")
    state = WeightsState(store)
    older = [task_trace(f"task {i}") for i in range(2)]
    newest = task_trace("task newest")
    # Three updates arrive while the setter is not running (say, the chain was away): they fold into one.
    for i, (parent, _) in enumerate([*older, newest]):
        assert await state.offer(scores(1_000 + i, f"digest-{i}"), parent)
    backend = LedgerBackend(store, tmp_path / "ledger.jsonl", {"hk-a": 0, "hk-b": 1})
    await backend.start()
    setter = WeightSetter(
        store,
        backend,
        state,
        None,
        SetterOptions(version_key=1, retry_initial_s=0.1, retry_max_s=1, idle_check_s=1, lease_s=5),
    )
    span_exporter.clear()
    assert await setter.attempt() == 0.0
    assert await state.pending() is None and await state.pending_traces() == []
    [span] = [s for s in span_exporter.get_finished_spans() if s.name == "set_weights ledger"]
    assert span.context.trace_id == newest[1].trace_id and span.parent.span_id == newest[1].span_id
    assert {link.context.span_id for link in span.links} == {ctx.span_id for _, ctx in older}
    assert span.attributes["weights.joined_updates"] == 3
    await store.close()


async def test_spans_and_log_lines_name_the_task_and_miner(nats_server, span_exporter, caplog):
    records: list[dict] = []
    formatter = telemetry.JsonFormatter("test")

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(json.loads(formatter.format(record)))

    capture = Capture()
    logging.getLogger("test.about").addHandler(capture)
    logging.getLogger("test.about").setLevel(logging.INFO)
    handled = asyncio.Event()

    async def handler(event: ev.SubmissionReceived, delivery) -> None:
        logging.getLogger("test.about").info("got it")
        handled.set()

    bus = await EventBus.connect(nats_server.url, "about-test")
    try:
        await bus.start([Consumer("about-test", events.SUBMISSION_RECEIVED, handler)])
        span_exporter.clear()
        submission = pb.Submission(task_id="task-42", miner_hotkey="5Hotkey", sha256="ab" * 32)
        await bus.publish(events.SUBMISSION_RECEIVED, ev.SubmissionReceived(submission=submission), msg_id="about-1")
        await asyncio.wait_for(handled.wait(), 10)
        assert await wait_for(lambda: _has_consumer_span(span_exporter), timeout=5)
    finally:
        await bus.stop(1)
        logging.getLogger("test.about").removeHandler(capture)
    spans = span_exporter.get_finished_spans()
    for kind in (trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER):
        [span] = [s for s in spans if s.kind == kind and s.name.endswith(events.SUBMISSION_RECEIVED)]
        assert span.attributes["task.id"] == "task-42" and span.attributes["miner.hotkey"] == "5Hotkey"
    [line] = [r for r in records if r["msg"] == "got it"]
    assert line["task_id"] == "task-42" and line["miner_hotkey"] == "5Hotkey" and len(line["trace_id"]) == 32
    # Outside the handler nothing is bound any more.
    assert telemetry.current_about() == {}


async def _has_consumer_span(exporter) -> bool:
    return any(s.kind == trace.SpanKind.CONSUMER for s in exporter.get_finished_spans())


def test_names_in_reads_top_level_and_nested_fields():
    task = pb.Task(task_id="t1", type=pb.DPO)
    assert telemetry.names_in(ev.TaskStateChanged(task_id="t1", task=task)) == {"task_id": "t1", "task_type": "DPO"}
    assert telemetry.names_in(ev.EvalCompleted(task_id="t2", type=pb.IMAGE)) == {"task_id": "t2", "task_type": "IMAGE"}
    assert telemetry.names_in(pb.Task(task_id="t3", type=99)) == {"task_id": "t3", "task_type": "99"}  # unknown enum
    assert telemetry.names_in(ev.WeightsSet()) == {}
