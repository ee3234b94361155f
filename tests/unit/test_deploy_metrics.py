"""The named metric instruments (gradients/runtime/metrics.py) on an in-memory reader."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gradients.runtime import metrics


def collect(reader: InMemoryMetricReader) -> dict[str, dict[tuple, object]]:
    """metric name → {sorted attribute items: data point}."""
    out: dict[str, dict[tuple, object]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    out.setdefault(metric.name, {})[tuple(sorted(point.attributes.items()))] = point
    return out


@pytest.fixture
def instruments():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield metrics.Instruments(provider.get_meter("test")), reader
    provider.shutdown()


def test_counters_sum_per_attribute(instruments):
    inst, reader = instruments
    inst.offers.add(1, {"outcome": "accepted"})
    inst.offers.add(1, {"outcome": "accepted"})
    inst.offers.add(1, {"outcome": "declined"})
    inst.auth_failures.add(1, {"reason": "stale_nonce"})
    got = collect(reader)
    assert got["gradients.offers"][(("outcome", "accepted"),)].value == 2
    assert got["gradients.offers"][(("outcome", "declined"),)].value == 1
    assert got["gradients.auth.failures"][(("reason", "stale_nonce"),)].value == 1


def test_evaluation_histogram_uses_evaluation_buckets(instruments):
    inst, reader = instruments
    for seconds in (0.2, 45.0, 3000.0):
        inst.evaluation_seconds.record(seconds, {"task_type": "DPO"})
    point = collect(reader)["gradients.evaluation.duration"][(("task_type", "DPO"),)]
    assert tuple(point.explicit_bounds) == metrics.EVALUATION_BUCKETS_S
    bounds = metrics.EVALUATION_BUCKETS_S
    expected = [0] * (len(bounds) + 1)
    expected[0] += 1  # 0.2 ≤ 1
    expected[bounds.index(60)] += 1  # 30 < 45 ≤ 60
    expected[bounds.index(3600)] += 1  # 1800 < 3000 ≤ 3600
    assert list(point.bucket_counts) == expected
    assert point.count == 3 and point.sum == pytest.approx(3045.2)


def test_tasks_by_state_reports_the_latest_counts_and_zero_for_states_gone(instruments):
    inst, reader = instruments
    inst.tasks_by_state.set({"TRAINING": 2, "PENDING": 1})
    assert {k: p.value for k, p in collect(reader)["gradients.tasks"].items()} == {
        (("state", "TRAINING"),): 2,
        (("state", "PENDING"),): 1,
    }
    inst.tasks_by_state.set({"EVALUATING": 2})
    assert {k: p.value for k, p in collect(reader)["gradients.tasks"].items()} == {
        (("state", "TRAINING"),): 0,
        (("state", "PENDING"),): 0,
        (("state", "EVALUATING"),): 2,
    }
    with pytest.raises(ValueError, match="PENDING"):
        inst.tasks_by_state.set({"PENDING": -1})


def test_latest_values_update_keeps_other_series():
    values = metrics.LatestValues()
    values.update({(("durable", "a"),): 3, (("durable", "b"),): 1})
    values.update({(("durable", "a"),): 0})
    assert values.snapshot() == {(("durable", "a"),): 0, (("durable", "b"),): 1}
    assert sorted((o.value, o.attributes["durable"]) for o in values.observe()) == [(0, "a"), (1, "b")]


def test_no_endpoint_installs_nothing():
    if metrics._provider is not None:
        pytest.skip("a MeterProvider was installed earlier in this process")
    assert metrics.install_metrics("test", None) is None
    assert metrics._provider is None


def test_lag_reporter_rejects_a_non_positive_interval():
    with pytest.raises(ValueError, match="interval_s"):
        metrics.ConsumerLagReporter(bus=None, durables=["x"], interval_s=0)
