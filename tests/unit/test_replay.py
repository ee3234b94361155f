"""Scorer glue without I/O: event → scoring types, log records, "now" handling, and the
auditor's replay (recompute from logged inputs, compare bit for bit)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.scorer.conversion import (
    live_now_micros,
    micros_to_iso,
    micros_to_seconds,
    micros_to_timestamp,
    parse_now,
    submission_result,
    submission_results,
    task_info,
    task_scored,
    timestamp_seconds,
    timestamp_to_micros,
)
from services.scorer.keeper import scores_updated
from services.scorer.logic import ScoredTask, build_score_table, recompute, replay, score_task
from services.scorer.records import Computation, LogEntry, decode_record, encode_record, scored_differences
from services.scorer.replay import replay_entries
from services.scorer.scoring_config import DAY_S, ScoringConfig
from services.scorer.scoring_config import DEFAULT_SCORING_CONFIG as CFG

NOW_US = 1_767_225_600_123_456  # 2026-01-01T00:00:00.123456Z


# --------------------------------------------------------------------------- time


def test_iso_now_round_trips_to_the_same_float():
    assert micros_to_iso(NOW_US) == "2026-01-01T00:00:00.123456Z"
    assert parse_now(micros_to_iso(NOW_US)) == micros_to_seconds(NOW_US)
    assert parse_now("2026-01-01T00:00:00.123456") == micros_to_seconds(NOW_US)  # naive = UTC
    assert parse_now("2026-01-01T01:00:00.123456+01:00") == micros_to_seconds(NOW_US)
    assert parse_now("1767225600.5") == 1767225600.5


@pytest.mark.parametrize("text", ["", "yesterday", "nan", "inf"])
def test_parse_now_rejects_what_is_not_a_time(text):
    with pytest.raises(ValueError, match="now"):
        parse_now(text)


def test_timestamps_convert_exactly():
    ts = micros_to_timestamp(NOW_US)
    assert (ts.seconds, ts.nanos) == (1_767_225_600, 123_456_000)
    assert timestamp_to_micros(ts) == NOW_US
    assert timestamp_seconds(ts) == 1_767_225_600 + 0.123456


def test_live_now_never_goes_back_and_covers_the_task():
    assert live_now_micros(100, None, None) == 100
    assert live_now_micros(100, 250, None) == 251  # strictly after the previous computation
    assert live_now_micros(300, 250, None) == 300
    # A task whose worker clock ran ahead is still inside the windows at this "now".
    completed = 1_767_225_600.9999997
    now_us = live_now_micros(NOW_US, None, completed)
    assert micros_to_seconds(now_us) >= completed and now_us - math.floor(completed * 1e6) <= 2


# --------------------------------------------------------------------------- EvalCompleted → logic


def eval_result(hotkey, ok=True, test=1.0, synth=1.1, seq=0, per_test=(), per_synth=(), reason=""):
    weighted = 0.7 * test + 0.3 * synth
    return pb.EvaluationResult(
        miner_hotkey=hotkey,
        ok=ok,
        failure_reason=reason,
        loss_test=test,
        loss_synth=synth,
        loss_weighted=weighted,
        upload_seq=seq,
        per_example_test=per_test,
        per_example_synth=per_synth,
    )


def test_failed_and_non_finite_results_are_failed_submissions():
    failed = submission_result(eval_result("a", ok=False, reason="not a fine-tune of the base model"))
    assert not failed.valid and failed.fail_reason == "not a fine-tune of the base model"
    assert submission_result(eval_result("a", ok=False)).fail_reason == "evaluation failed"
    nan = submission_result(eval_result("b", test=float("nan")))
    assert not nan.valid and "non-finite" in nan.fail_reason
    inf_example = submission_result(eval_result("c", per_test=(0.5, float("inf"))))
    assert not inf_example.valid


def test_valid_result_keeps_losses_and_upload_order():
    r = submission_result(eval_result("a", test=0.5, synth=0.75, seq=7, per_test=(0.25, 0.75), per_synth=(1.0,)))
    assert r.valid and (r.l_test, r.l_synth, r.l_weighted) == (0.5, 0.75, 0.7 * 0.5 + 0.3 * 0.75)
    assert r.upload_order == (0.0, 7, "a") and r.per_example_test == (0.25, 0.75)


def test_task_info_from_the_event():
    event = ev.EvalCompleted(
        task_id="t1",
        type=pb.IMAGE,
        base_model_params_b=2.0,
        hours=3.0,
        completed_at=micros_to_timestamp(NOW_US),
        ok=True,
    )
    info = task_info(event, CFG)
    assert (info.task_id, info.model_params_billions, info.hours) == ("t1", 2.0, 3.0)
    assert info.completed_at == timestamp_seconds(event.completed_at)
    assert info.loss_test_weight == 1.0  # image: per-example test losses are already the δ-mix
    assert task_info(ev.EvalCompleted(task_id="t2", type=pb.INSTRUCT_TEXT), CFG).loss_test_weight is None


def scored_for(results: list[pb.EvaluationResult]) -> tuple[ev.TaskScored, object]:
    event = ev.EvalCompleted(
        task_id="t1",
        type=pb.INSTRUCT_TEXT,
        results=results,
        base_model_params_b=1.0,
        hours=1.0,
        completed_at=micros_to_timestamp(NOW_US),
        ok=True,
    )
    result = score_task(task_info(event, CFG), submission_results(event), CFG)
    # Through the wire, as subscribers see it.
    return ev.TaskScored.FromString(task_scored(result, NOW_US).SerializeToString()), result


def test_rank1_confidence_is_absent_with_fewer_than_two_credited_never_nan():
    one, result = scored_for([eval_result("a", test=1.0, synth=9.0, per_test=(1.0, 1.0)), eval_result("b", ok=False)])
    assert not one.HasField("rank1_confidence") and not any(s.suspicious for s in one.scores)
    assert scored_differences(one, result) == []
    none, _ = scored_for([eval_result("a", ok=False), eval_result("b", ok=False)])
    assert not none.HasField("rank1_confidence")
    # per-example (second − first) = 1 in every resample → confidence 1
    two, result2 = scored_for(
        [eval_result("a", test=1.0, per_test=(1.0, 1.0)), eval_result("b", test=2.0, per_test=(2.0, 2.0))]
    )
    assert two.HasField("rank1_confidence") and two.rank1_confidence == 1.0
    # A record from before the field was optional said NaN for "none": read as absent.
    legacy = ev.TaskScored()
    legacy.CopyFrom(one)
    legacy.rank1_confidence = float("nan")
    assert scored_differences(legacy, result) == []
    # Absent where a value was recomputed (and the reverse) is a difference.
    two.ClearField("rank1_confidence")
    assert any("rank1_confidence" in p for p in scored_differences(two, result2))


# --------------------------------------------------------------------------- records


def test_compact_record_round_trips_bit_for_bit():
    rec = ScoredTask("t", 1_767_225_600.1 + 0.2, {"b": 0.1 + 0.2, "a": -1.0 * math.sqrt(2.0) * 2})
    again = decode_record("t", encode_record(rec))
    assert again == rec and [v.hex() for _, v in again.adjusted] == [v.hex() for _, v in rec.adjusted]


def test_log_entry_and_computation_fields_round_trip():
    entry = LogEntry("t", "v1", "d" * 64, b"\x01\x02", b"\x03")
    assert LogEntry.from_fields(entry.fields()) == entry
    broken = entry.fields()
    del broken[b"eval"]
    with pytest.raises(ValueError, match="eval"):
        LogEntry.from_fields(broken)
    comp = Computation(NOW_US, "e" * 64, 12, "v1", "task:t")
    assert Computation.from_fields(comp.fields()) == comp and comp.now == micros_to_seconds(NOW_US)


# --------------------------------------------------------------------------- replay


def make_event(task_id: str, rng: random.Random, completed_us: int, miners: list[str]) -> ev.EvalCompleted:
    results = []
    for seq, hk in enumerate(miners):
        if rng.random() < 0.15:
            results.append(eval_result(hk, ok=False, seq=seq, reason="evaluation failed: oom"))
            continue
        per_test = tuple(rng.uniform(0.5, 2.0) for _ in range(6))
        per_synth = tuple(rng.uniform(0.5, 2.0) for _ in range(4))
        test, synth = sum(per_test) / 6, sum(per_synth) / 4
        results.append(eval_result(hk, test=test, synth=synth, seq=seq, per_test=per_test, per_synth=per_synth))
    return ev.EvalCompleted(
        task_id=task_id,
        type=pb.INSTRUCT_TEXT,
        results=results,
        base_model_params_b=rng.choice([0.5, 1.0, 7.0]),
        hours=rng.choice([1.0, 2.0, 4.0]),
        completed_at=micros_to_timestamp(completed_us),
        ok=True,
    )


def live_entry(event: ev.EvalCompleted, config: ScoringConfig = CFG) -> LogEntry:
    """What the live scorer logs for one event (the same calls ScoreKeeper makes)."""
    result = score_task(task_info(event, config), submission_results(event), config)
    scored = task_scored(result, NOW_US)
    return LogEntry(
        event.task_id, config.version, config.digest(), event.SerializeToString(), scored.SerializeToString()
    )


def sample_log(n: int = 20, seed: int = 3) -> list[LogEntry]:
    rng = random.Random(seed)
    miners = [f"miner-{i}" for i in range(7)]
    out = []
    for k in range(n):
        completed = NOW_US - int(rng.uniform(0, 6.5) * DAY_S * 1e6)
        out.append(live_entry(make_event(f"task-{k:03d}", rng, completed, rng.sample(miners, rng.randint(2, 6)))))
    return out


def test_replay_of_an_honest_log_has_no_mismatch_and_the_live_digest():
    entries = sample_log()
    now = micros_to_seconds(NOW_US)
    # The live digest: the compact records the keeper keeps, recomputed at `now`.
    live_records = [
        ScoredTask(
            e.task_id,
            timestamp_seconds(e.event().completed_at),
            {s.miner_hotkey: s.adjusted for s in e.scored().scores},
        )
        for e in entries
    ]
    live = recompute(build_score_table(live_records), now, CFG)
    report = replay_entries(entries, now, CFG, Computation(NOW_US, live.digest, len(entries), CFG.version, "task:x"))
    assert report.mismatches == () and report.not_recomputed == ()
    assert report.recomputed == report.entries == 20
    assert report.digest == live.digest and report.matches_live and report.ok
    # order of the log does not matter
    assert replay_entries(list(reversed(entries)), now, CFG).digest == live.digest


def test_a_tampered_stored_score_is_reported_and_not_believed():
    entries = sample_log()
    victim = entries[4]
    scored = victim.scored()
    scored.scores[0].adjusted += 1e-12  # one ulp-ish nudge is enough
    entries[4] = replace(victim, task_scored=scored.SerializeToString())
    now = micros_to_seconds(NOW_US)
    report = replay_entries(entries, now, CFG)
    assert [m.task_id for m in report.mismatches] == [victim.task_id]
    assert "adjusted" in report.mismatches[0].problems[0] and not report.ok
    assert report.digest == replay_entries(sample_log(), now, CFG).digest  # recomputed values are used


def test_entries_from_another_config_use_their_stored_scores():
    entries = sample_log(6)
    other = ScoringConfig(version="2025.1.0", first_place_score=5.0)
    foreign = live_entry(
        make_event("old-task", random.Random(9), NOW_US - 10**9, ["miner-1", "miner-2", "miner-3"]), other
    )
    report = replay_entries([*entries, foreign], micros_to_seconds(NOW_US), CFG)
    assert report.not_recomputed == ("old-task",) and report.recomputed == 6 and report.mismatches == ()
    winner = next(s for s in foreign.scored().scores if s.rank == 1)
    assert winner.task_score == 5.0  # the old rule's score is what enters the windows
    stored = [
        ScoredTask(
            e.task_id,
            timestamp_seconds(e.event().completed_at),
            {s.miner_hotkey: s.adjusted for s in e.scored().scores},
        )
        for e in [*entries, foreign]
    ]
    assert report.digest == replay(stored, micros_to_seconds(NOW_US), CFG).digest


def test_scored_differences_compares_every_field_exactly():
    entry = sample_log(1)[0]
    again = score_task(task_info(entry.event(), CFG), submission_results(entry.event()), CFG)
    assert scored_differences(entry.scored(), again) == []
    changed = entry.scored()
    changed.scores[-1].reason = "edited"
    changed.task_weight = changed.task_weight * (1 + 2**-52)
    problems = scored_differences(changed, again)
    assert any("reason" in p for p in problems) and any("task_weight" in p for p in problems)


def test_scores_updated_lists_best_first_with_the_digest():
    records = [ScoredTask("t1", 10.0, {"a": 3.0, "b": -1.0, "c": 0.0}), ScoredTask("t2", 20.0, {"c": 3.0, "d": 3.0})]
    weights = recompute(build_score_table(records), 30.0, CFG)
    update = scores_updated(weights, 30_000_000)
    finals = [s.final_score for s in update.scores]
    assert finals == sorted(finals, reverse=True) and update.digest == weights.digest
    assert [s.miner_hotkey for s in update.scores][:3] == ["a", "c", "d"]  # equal finals: by hotkey
    assert timestamp_to_micros(update.at) == 30_000_000
