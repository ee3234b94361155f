"""Load at CI size: 40 connected SDK miners, 8 tasks in flight at once, instant training."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.reliability.load import LoadOptions, run, timeline
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev

pytestmark = [pytest.mark.reliability]

FLOW = ("PREPARING_DATA", "LOOKING_FOR_MINERS", "TRAINING", "PREEVALUATION", "EVALUATING")


def change(task_id: str, version: int, to_state: int, at: float) -> ev.TaskStateChanged:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(at * 1e9))
    return ev.TaskStateChanged(task_id=task_id, version=version, to_state=to_state, at=stamp)


def test_timeline_measures_each_state_and_the_overlap():
    changes = [
        change("a", 2, pb.PREPARING_DATA, 100.0),
        change("a", 3, pb.LOOKING_FOR_MINERS, 101.0),
        change("a", 4, pb.TRAINING, 101.5),
        change("a", 5, pb.PREEVALUATION, 110.0),
        change("a", 6, pb.EVALUATING, 112.0),
        change("a", 7, pb.SCORED, 115.0),
        change("b", 2, pb.PREPARING_DATA, 100.0),
        change("b", 4, pb.TRAINING, 105.0),  # out of order on purpose
        change("b", 3, pb.LOOKING_FOR_MINERS, 104.0),
        change("b", 5, pb.FAILED, 106.0),
        change("c", 2, pb.PREPARING_DATA, 120.0),  # still running
    ]
    t = timeline(changes)
    assert sorted(t.durations["PREPARING_DATA"]) == [1.0, 4.0]
    assert t.durations["TRAINING"] == pytest.approx([8.5, 1.0])
    assert t.durations["EVALUATING"] == [3.0]
    assert sorted(t.end_to_end) == [6.0, 15.0]
    assert t.first_at == 100.0
    assert t.at_once["TRAINING"] == 2 and t.at_once["EVALUATING"] == 1
    assert t.at_once["in flight"] == 2  # c starts after a and b ended


@pytest.mark.timeout(300)
def test_many_miners_and_tasks_at_once_flow_without_errors(tmp_path):
    options = LoadOptions.ci(tmp_path)
    (result,) = asyncio.run(run(options))
    assert result.ok, result.summary()
    f = result.figures
    for stage in FLOW:
        assert f[f"{stage.lower()}_p50_s"] >= 0, (stage, result.summary())
    for stage in ("offer_to_answer", "download", "upload"):
        assert f[f"miner_{stage}_p50_s"] >= 0, (stage, result.summary())
    # Every miner that accepted uploaded once, and every upload was scored.
    assert f["uploads"] == f["accepted"] == f["scored_results"] >= options.tasks * options.pool_min, result.summary()
    assert f["tasks_in_flight_max"] == options.concurrent, result.summary()
    assert f["training_at_once_max"] >= 2, result.summary()
    assert f["miners_connected_min"] == options.miners, result.summary()
    assert f["events_per_s"] > 0 and f["tasks_per_min"] > 0
