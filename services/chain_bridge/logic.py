"""From final scores to chain weights (paper §3.6; SPEC step 8).

W_chain(m) = S_final(m) · V_trust(m), normalised to sum 1 and quantised to u16 with the bittensor
SDK's own helpers (`bittensor.intents.weights`):
  - `clip_to_max_weight(weights, limit)`: sum-normalises, and caps the largest share at the
    subnet's max_weight_limit (as a fraction) by redistributing mass; raises on all-zero input;
  - `normalize(uids, weights)`: max-upscales (largest → 65535), rounds to u16, drops zeros.
These are the calls `SetWeights` itself makes before submitting, so what we record in the local
ledger is exactly what the chain would receive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bittensor.intents.weights import clip_to_max_weight, normalize
from bittensor.settings import U16_MAX


@dataclass(frozen=True)
class ChainWeights:
    """uids ascending; weights (float, sum 1) and their u16 quantisation.

    Empty when no registered miner has a positive weight: nothing should be set this round (the
    chain rejects an empty or all-zero vector), and the caller keeps its last weights.
    """

    uids: tuple[int, ...]
    weights: tuple[float, ...]
    u16_uids: tuple[int, ...]
    u16_values: tuple[int, ...]

    @property
    def is_empty(self) -> bool:
        return not self.u16_uids


EMPTY_WEIGHTS = ChainWeights((), (), (), ())


def _check_uid(hotkey: str, uid: int) -> None:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= U16_MAX:
        raise ValueError(f"hotkey_to_uid[{hotkey!r}] must be an int in [0, {U16_MAX}], got {uid!r}")


def _check_weight(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def raw_chain_weights(
    final_scores: Mapping[str, float],
    hotkey_to_uid: Mapping[str, int],
    trust: Mapping[str, float] | None = None,
) -> dict[int, float]:
    """{uid: S_final · V_trust} for scored hotkeys that are registered (have a uid).

    A scored hotkey without a uid (deregistered since it was scored) is skipped: the chain has
    no slot for it. trust None means V_trust = 1 for everyone; a trust mapping must name every
    registered scored hotkey (a silent default would hide a wiring bug).
    """
    out: dict[int, float] = {}
    owner: dict[int, str] = {}
    for hotkey in sorted(final_scores):
        score = final_scores[hotkey]
        _check_weight(f"final_scores[{hotkey!r}]", score)
        if hotkey not in hotkey_to_uid:
            continue
        uid = hotkey_to_uid[hotkey]
        _check_uid(hotkey, uid)
        if uid in owner:
            raise ValueError(f"uid {uid} is mapped from two scored hotkeys: {owner[uid]!r} and {hotkey!r}")
        owner[uid] = hotkey
        if trust is None:
            v_trust = 1.0
        elif hotkey in trust:
            v_trust = trust[hotkey]
            _check_weight(f"trust[{hotkey!r}]", v_trust)
        else:
            raise ValueError(f"trust has no value for scored hotkey {hotkey!r}")
        out[uid] = float(score) * float(v_trust)
    return out


def chain_weights(
    final_scores: Mapping[str, float],
    hotkey_to_uid: Mapping[str, int],
    trust: Mapping[str, float] | None = None,
    max_weight_limit: float = 1.0,
) -> ChainWeights:
    """W_chain normalised to sum 1 (capped at max_weight_limit, a fraction in (0, 1]) and quantised.

    max_weight_limit: the subnet's MaxWeightsLimit / 65535; 1.0 (no cap) gives a plain sum-normalise.
    """
    if (
        isinstance(max_weight_limit, bool)
        or not isinstance(max_weight_limit, (int, float))
        or not 0 < max_weight_limit <= 1
    ):
        raise ValueError(f"max_weight_limit must be in (0, 1], got {max_weight_limit!r}")
    raw = raw_chain_weights(final_scores, hotkey_to_uid, trust)
    positive = sorted((uid, w) for uid, w in raw.items() if w > 0)
    if not positive:
        return EMPTY_WEIGHTS
    uids = [uid for uid, _ in positive]
    weights = clip_to_max_weight([w for _, w in positive], float(max_weight_limit))
    u16_uids, u16_values = normalize(uids, weights)
    return ChainWeights(tuple(uids), tuple(weights), tuple(u16_uids), tuple(u16_values))


def blocks_until_can_set(last_set_block: int | None, current_block: int, rate_limit_blocks: int) -> int:
    """Blocks to wait before weights may be set again (0 = now).

    The chain allows a set when current − last ≥ rate_limit (the same test as bittensor's
    preflight); last_set_block None or 0 means never set, so no wait.
    """
    for name, value in (("current_block", current_block), ("rate_limit_blocks", rate_limit_blocks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if last_set_block is None or last_set_block == 0:
        return 0
    if isinstance(last_set_block, bool) or not isinstance(last_set_block, int) or last_set_block < 0:
        raise ValueError(f"last_set_block must be an int >= 0 or None, got {last_set_block!r}")
    if last_set_block > current_block:
        raise ValueError(f"last_set_block {last_set_block} is after current_block {current_block}")
    return max(0, rate_limit_blocks - (current_block - last_set_block))


def can_set_weights(last_set_block: int | None, current_block: int, rate_limit_blocks: int) -> bool:
    return blocks_until_can_set(last_set_block, current_block, rate_limit_blocks) == 0
