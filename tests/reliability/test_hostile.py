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
    "late upload": ("deadline", "TRAINING"),   # the deadline passed, or the task already moved on
    "pickle upload": "upload safetensors only",
    "path traversal archive": "unsafe upload archive",
    "symlink archive": "is a link",
    "oversized upload": "upload limit",
    "wrong base architecture": "incompatible with base",
    "NaN weights": "contains NaN or Inf values",
    "copied submission": "duplicate of",
    "flood": "rate limit",
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
    assert results["wrong base architecture"].tried == 3     # another model's LoRA, a full model, rank 65536
    assert results["oversized upload"].tried == 3            # announced over the cap, lied about, over the eval cap
    assert results["replayed nonce"].tried == 4              # every method but OpenSession

    flood = results["flood"]
    assert flood.tried >= 200, flood.summary()
    assert flood.figures.get("AnswerOffer_OK-recorded", 0) == 0, flood.summary()   # no answer recorded twice
    assert flood.figures["rate_limited"] > 0 and flood.figures["honest_flood_calls"] > 0, flood.summary()

    honest = results[HONEST_ROW]
    assert honest.ok, honest.summary()
    assert honest.figures["tasks_scored"] == options.tasks and honest.lost == 0 and honest.crashes == 0
