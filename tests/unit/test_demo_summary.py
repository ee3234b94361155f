"""The demo summary's per-task line: the winner's loss against the base model's and the best
autotrain-default miner's, from a task's EvalCompleted and TaskScored."""

from __future__ import annotations

from gradients.demo import STRATEGIES, clear_previous_round, task_loss_summary
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev

STRATEGY = {"hk-a": "autotrain-default", "hk-b": "lr-sweep", "hk-c": "autotrain-default", "hk-d": "random-search"}


def evaluation(with_default: bool = True) -> ev.EvalCompleted:
    results = [
        pb.EvaluationResult(miner_hotkey="hk-b", ok=True, loss_weighted=0.8),
        pb.EvaluationResult(miner_hotkey="hk-d", ok=False, failure_reason="refused"),
    ]
    if with_default:
        results += [
            pb.EvaluationResult(miner_hotkey="hk-a", ok=True, loss_weighted=1.3),
            pb.EvaluationResult(miner_hotkey="hk-c", ok=True, loss_weighted=1.1),
        ]
    return ev.EvalCompleted(
        task_id="t1", ok=True, results=results, baseline=pb.EvaluationResult(ok=True, loss_weighted=2.0)
    )


def scored() -> ev.TaskScored:
    return ev.TaskScored(
        task_id="t1", scores=[pb.Score(miner_hotkey="hk-b", rank=1), pb.Score(miner_hotkey="hk-c", rank=2)]
    )


def test_winner_against_base_and_best_default():
    s = task_loss_summary(evaluation(), scored(), STRATEGY.get)
    assert (s.task_id, s.winner, s.winner_loss, s.base_loss) == ("t1", "hk-b", 0.8, 2.0)
    assert (s.default_loss, s.default_miner) == (1.1, "hk-c")  # the better of the two default miners


def test_no_default_miner_and_no_baseline():
    e = evaluation(with_default=False)
    e.ClearField("baseline")
    s = task_loss_summary(e, scored(), STRATEGY.get)
    assert s.default_loss is None and s.default_miner == "" and s.base_loss is None
    assert task_loss_summary(None, scored(), STRATEGY.get) is None
    assert task_loss_summary(evaluation(), ev.TaskScored(task_id="t1"), STRATEGY.get) is None


def test_demo_rotates_the_registered_strategies():
    from miner_sdk.training.strategies import STRATEGIES as REGISTERED

    assert STRATEGIES[:3] == ("autotrain-default", "lr-sweep", "random-search")
    assert set(STRATEGIES) <= set(REGISTERED) and {"lr-range-cosine", "successive-halving"} <= set(STRATEGIES)


def test_a_new_round_starts_without_the_last_rounds_tasks_but_keeps_models_and_datasets(tmp_path):
    for name in ("mesh/redis/appendonly.aof", "mesh/nats/jetstream/x", "miners/miner-1/state", "models/tiny/w"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "datasets").mkdir()
    clear_previous_round(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets", "models"]
    assert (tmp_path / "models/tiny/w").read_text() == "x"
    clear_previous_round(tmp_path)  # nothing left to clear: no error
