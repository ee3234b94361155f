"""Hostile miners in a real round (benchmarks/reliability/hostile.py): every attack refused or
penalised per the spec with its stated reason, the flooder gains nothing, the honest miners
are unaffected. One round at CI size (every attack kind, fewer repetitions)."""

from __future__ import annotations

import pytest

from benchmarks.reliability.hostile import HONEST_ROW, ROWS, HostileOptions, run

pytestmark = [pytest.mark.reliability]

# Row -> what its refusal must say (any of, for a tuple): the gateway's gRPC details, the
# evaluation's failure_reason or the scorer's reason.
REASONS = {
    "unsigned call": "requires a btauth/1 hotkey signature",
    "forged signature": "BadSignature",
    "replayed nonce": "ReplayedRequest",
    "stale timestamp": "StaleRequest",
    "wrong receiver": "WrongReceiver",
    "unknown hotkey": "is not an allowed miner",
    "not a miner of the task": "is not a miner of task",
    "late upload": ("deadline", "TRAINING"),  # the deadline passed, or the task already moved on
    "pickle upload": "upload safetensors only",
    "path traversal archive": "unsafe upload archive",
    "symlink archive": "is a link",
    "oversized upload": "upload limit",
    "wrong base architecture": "incompatible with base",
    "NaN weights": "contains NaN or Inf values",
    "copied submission": "duplicate of",
    "flood": "rate limit",
    # Customers (benchmarks/reliability/customers.py), on the customer API after the round.
    "no API key": "an API key is required",
    "bad API key": "API key is not valid",
    "revoked API key": "API key is not valid",
    "another account's task": "not found",
    "dataset path outside the roots": "dataset.uri",
    "dataset URL not public": "non-public address",
    "oversized dataset upload": "dataset limit",
    "sha256-mismatched upload": "sha256",
    "quota exceeded": "retry",
    "20 CreateTask, one request_id": "1 task(s) for 20 calls",
}


@pytest.mark.timeout(300)
async def test_hostile_miners_are_refused_or_penalised_and_nobody_else_is_affected(tmp_path):
    options = HostileOptions.ci()
    options.data_dir = tmp_path
    results = {r.name: r for r in await run(options)}

    assert set(results) == {*ROWS, HONEST_ROW}
    for name in ROWS:
        result = results[name]
        assert result.category == "hostile"
        assert result.ok and result.tried >= 1, result.summary()
    for name, reasons in REASONS.items():
        said = str(results[name].figures.get("reason", ""))
        assert any(r in said for r in ([reasons] if isinstance(reasons, str) else reasons)), results[name].summary()

    # Every poisoned upload kind reached the eval worker and was refused there (one miner each).
    assert results["pickle upload"].tried == 2 and results["path traversal archive"].tried == 2
    assert results["wrong base architecture"].tried == 3  # another model's LoRA, a full model, rank 65536
    assert results["oversized upload"].tried == 3  # announced over the cap, lied about, over the eval cap
    assert results["replayed nonce"].tried == 4  # every method but OpenSession

    # Every TaskService method refuses each missing / bad / revoked key; every kind of dataset
    # source attack and upload attack was tried (benchmarks/reliability/customers.py).
    assert results["no API key"].tried == 8 and results["revoked API key"].tried == 8
    assert results["bad API key"].tried == 32  # 4 kinds of bad key × 8 methods
    assert results["another account's task"].tried == 12  # 5 methods × (a customer's, a synthetic task) + 2
    assert results["dataset path outside the roots"].tried == 6 and results["dataset URL not public"].tried == 5
    assert results["oversized dataset upload"].tried == 3 and results["sha256-mismatched upload"].tried == 2
    assert results["quota exceeded"].tried == 2 and results["20 CreateTask, one request_id"].tried == 1

    flood = results["flood"]
    assert flood.tried >= 200, flood.summary()
    assert flood.figures.get("AnswerOffer_OK-recorded", 0) == 0, flood.summary()  # no answer recorded twice
    assert flood.figures["rate_limited"] > 0 and flood.figures["honest_flood_calls"] > 0, flood.summary()

    honest = results[HONEST_ROW]
    assert honest.ok, honest.summary()
    assert honest.figures["tasks_scored"] == options.tasks and honest.lost == 0 and honest.crashes == 0
