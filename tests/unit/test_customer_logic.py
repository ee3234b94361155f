"""Pure parts of the customer API: quotas, keys, the result a customer sees."""

from __future__ import annotations

import math

import pytest

from gradients.accounts import Account, bearer_key, check_quota, key_hash, new_api_key
from gradients.runtime import InvalidArgument
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.task_service.datasets import upload_format
from services.task_service.results import ResultRecord, build_result, relative_improvement, winner_of


def test_keys_are_random_and_only_their_hash_is_kept():
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("gm_") and len(a) > 40
    assert key_hash(a) == key_hash(a) and key_hash(a) != key_hash(b) and a not in key_hash(a)


@pytest.mark.parametrize(
    "header,key",
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", ""),
        ("abc", ""),
        ("", ""),
        ("Bearer", ""),
    ],
)
def test_bearer_key(header, key):
    assert bearer_key(header) == key


def test_no_quota_means_no_limit():
    assert check_quota(Account("a"), live_tasks=1000, created_times=[0.0] * 1000, now=10.0).allowed


def test_concurrency_quota():
    account = Account("a", max_concurrent_tasks=2)
    assert check_quota(account, 1, [], 0.0).allowed
    decision = check_quota(account, 2, [], 0.0)
    assert not decision.allowed and "2 tasks running" in decision.reason


def test_hourly_quota_is_a_sliding_window_and_says_when_to_retry():
    account = Account("a", tasks_per_hour=2)
    now = 10_000.0
    # Two tasks at now-3000 and now-600: the window is full; the older one leaves it in 600 s.
    decision = check_quota(account, 0, [now - 3000, now - 600], now)
    assert (
        not decision.allowed and decision.retry_after_s == pytest.approx(600.0) and "retry in 600 s" in decision.reason
    )
    # A task older than an hour no longer counts.
    assert check_quota(account, 0, [now - 3601, now - 600], now).allowed
    # Three in the window with a limit of 2: the slot frees when the second oldest is an hour old.
    decision = check_quota(account, 0, [now - 3500, now - 3000, now - 10], now)
    assert decision.retry_after_s == pytest.approx(600.0)


def test_relative_improvement_by_hand():
    assert relative_improvement(2.0, 1.5) == pytest.approx(0.25)
    assert relative_improvement(2.0, 2.5) == pytest.approx(-0.25)
    # GRPO losses are minus rewards: base reward 0.4 (loss -0.4), winner 0.6 (loss -0.6) → +50 %.
    assert relative_improvement(-0.4, -0.6) == pytest.approx(0.5)
    assert relative_improvement(0.0, 1.0) == 0.0
    assert relative_improvement(math.nan, 1.0) == 0.0


def test_the_winner_is_rank_one_and_never_a_duplicate():
    scores = [
        pb.Score(miner_hotkey="copy", rank=1, duplicate=True),
        pb.Score(miner_hotkey="b", rank=2),
        pb.Score(miner_hotkey="a", rank=3),
        pb.Score(miner_hotkey="failed", rank=0),
    ]
    assert winner_of(scores) == "b"
    assert winner_of([pb.Score(miner_hotkey="failed", rank=0)]) == ""


def test_upload_format():
    assert upload_format("train.JSONL", "") == "jsonl"
    assert upload_format("data.bin", "parquet") == "parquet"
    with pytest.raises(InvalidArgument):
        upload_format("data.bin", "")
    with pytest.raises(InvalidArgument):
        upload_format("train.jsonl", "exe")


def _result(hotkey: str, test: float, synth: float, ok: bool = True) -> pb.EvaluationResult:
    return pb.EvaluationResult(
        miner_hotkey=hotkey, ok=ok, loss_test=test, loss_synth=synth, loss_weighted=0.7 * test + 0.3 * synth
    )


def test_build_result_compares_the_winner_with_the_base():
    task = pb.Task(task_id="t", state=pb.SCORED, base_model="base", result_model_name="org/out")
    evaluation = ev.EvalCompleted(
        task_id="t", ok=True, results=[_result("w", 1.0, 2.0), _result("x", 2.0, 2.0), _result("bad", 0, 0, ok=False)]
    )
    evaluation.baseline.CopyFrom(_result("", 3.0, 3.0))
    scored = ev.TaskScored(
        task_id="t",
        rank1_confidence=0.9,
        scores=[
            pb.Score(miner_hotkey="w", rank=1, task_score=3.0),
            pb.Score(miner_hotkey="x", rank=2, task_score=-1),
            pb.Score(miner_hotkey="bad", rank=0, reason="refused: not a LoRA"),
        ],
    )
    subs = [pb.Submission(task_id="t", miner_hotkey="w", sha256="ab" * 32, size_bytes=10, kind="adapter")]
    out = build_result(task, ResultRecord(evaluation, scored), subs)
    assert out.winner_hotkey == "w" and out.winner.weighted == pytest.approx(1.3)
    assert out.has_base and out.base.weighted == pytest.approx(3.0)
    assert out.improvement == pytest.approx((3.0 - 1.3) / 3.0)
    assert out.HasField("rank1_confidence") and out.rank1_confidence == pytest.approx(0.9)
    assert [m.miner_hotkey for m in out.miners] == ["w", "x", "bad"]
    assert out.miners[2].failure_reason and not out.miners[2].ok
    assert out.winner_sha256 == "ab" * 32 and out.winner_kind == "adapter"


def test_one_valid_submission_has_no_rank1_confidence():
    task = pb.Task(task_id="t", state=pb.SCORED)
    evaluation = ev.EvalCompleted(task_id="t", ok=True, results=[_result("w", 1.0, 1.0)])
    scored = ev.TaskScored(task_id="t", scores=[pb.Score(miner_hotkey="w", rank=1)])  # confidence left unset
    out = build_result(task, ResultRecord(evaluation, scored), [])
    assert out.winner_hotkey == "w" and not out.HasField("rank1_confidence") and not out.has_base
    assert out.improvement == 0.0
