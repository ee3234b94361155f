"""Faults: kill -9 of every service mid-round, NATS and Redis restarts, a 3-node NATS cluster losing a node.

Real processes throughout (benchmarks/reliability/faults.py); the audit checks every task
ended SCORED or FAILED with a reason, none stuck, no duplicate score, no lost submission,
no valid submission refused. CI runs the first two; `make reliability` runs all.
"""

from __future__ import annotations

import pytest

from benchmarks.reliability.faults import FaultOptions, run

pytestmark = [pytest.mark.reliability]


async def run_one(scenario: str, tmp_path, options: FaultOptions | None = None):
    options = options or FaultOptions.ci()
    options.scenarios = (scenario,)
    options.data_dir = tmp_path
    [result] = await run(options)
    return result


@pytest.mark.timeout(900)
async def test_kill_9_of_every_service_loses_nothing(tmp_path):
    result = await run_one("kill", tmp_path)
    assert result.ok, result.summary()
    assert result.tried >= 6 and result.figures.get("tasks_scored", 0) >= 1, result.summary()


@pytest.mark.timeout(600)
async def test_cluster_node_lost_redis_restarted_node_back_in_one_round(tmp_path):
    result = await run_one("infrastructure", tmp_path)
    assert result.ok, result.summary()
    assert result.tried == 3 and result.figures["replicas"] == 3, result.summary()
    assert result.figures.get("tasks_scored", 0) >= 1, result.summary()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_single_nats_then_redis_restart_mid_round(tmp_path):
    result = await run_one("nats-redis-restart", tmp_path)
    assert result.ok, result.summary()
    assert result.tried == 2, result.summary()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_nats_cluster_loses_a_node(tmp_path):
    result = await run_one("nats-cluster", tmp_path)
    assert result.ok and result.figures["replicas"] == 3, result.summary()


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_kill_9_during_20_rounds_full_size(tmp_path):
    result = await run_one("kill", tmp_path, FaultOptions())
    assert result.ok, result.summary()
