"""Settings of chain_bridge (GRADIENTS_CHAIN_*). See docs/chain.md.

Backends: `ledger` (the embedded default) appends every weight vector to a Redis stream and a
JSONL file under the data dir; `bittensor` sets them on a subtensor (finney, test, or a
ws(s):// endpoint such as a local subtensor) with the bittensor SDK.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gradients.runtime.config import non_negative, one_of, positive, setting

TRUST_SOURCES = ("validator", "miner", "none")


def _network_check(value: str) -> str | None:
    from bittensor.settings import NETWORKS

    if value in NETWORKS or value.startswith(("ws://", "wss://")):
        return None
    return f"must be one of {', '.join(sorted(NETWORKS))} or a ws:// / wss:// endpoint"


def _endpoints_check(value: str) -> str | None:
    bad = [u for u in (p.strip() for p in value.split(",")) if u and not u.startswith(("ws://", "wss://"))]
    return f"not ws:// or wss:// endpoints: {', '.join(bad)}" if bad else None


def _max_weight_check(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def load_uid_mapping(path: Path) -> dict[str, int]:
    """JSON object {hotkey: uid}; uids unique ints in [0, 65535]."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object {hotkey: uid}")
    out: dict[str, int] = {}
    for hotkey, uid in raw.items():
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= 65535:
            raise ValueError(f"uid of {hotkey!r} must be an int in [0, 65535], got {uid!r}")
        out[hotkey] = uid
    if len(set(out.values())) != len(out):
        raise ValueError("two hotkeys share a uid")
    return out


def _uid_file_check(value: str) -> str | None:
    if not value:
        return None
    try:
        load_uid_mapping(Path(value))
    except (OSError, ValueError) as exc:
        return f"cannot load the uid mapping: {exc}"
    return None


@dataclass(frozen=True)
class ChainBridgeSettings:
    backend: str = setting(
        "GRADIENTS_CHAIN_BACKEND",
        "ledger",
        "ledger (local, embedded default) or bittensor",
        check=one_of("ledger", "bittensor"),
    )
    network: str = setting(
        "GRADIENTS_CHAIN_NETWORK",
        "finney",
        "bittensor backend: finney, test, local, or a ws(s):// subtensor endpoint",
        check=_network_check,
    )
    fallback_endpoints: str = setting(
        "GRADIENTS_CHAIN_FALLBACK_ENDPOINTS",
        "",
        "comma-separated ws(s):// endpoints tried when the network's is unreachable (empty = the SDK's pool for finney)",
        check=_endpoints_check,
    )
    netuid: int = setting("GRADIENTS_CHAIN_NETUID", 56, "subnet the weights are set on", check=non_negative)
    mechid: int = setting("GRADIENTS_CHAIN_MECHID", 0, "mechanism index within the subnet", check=non_negative)
    version_key: int = setting(
        "GRADIENTS_CHAIN_VERSION_KEY",
        0,
        "weights version_key (must not be older than the subnet's required version)",
        check=non_negative,
    )
    wallet_name: str = setting("GRADIENTS_CHAIN_WALLET_NAME", "validator", "validator wallet (coldkey) name")
    wallet_hotkey: str = setting(
        "GRADIENTS_CHAIN_WALLET_HOTKEY", "default", "validator hotkey name (signs the weights)"
    )
    wallet_path: str = setting("GRADIENTS_CHAIN_WALLET_PATH", "", "wallets folder (empty = ~/.bittensor/wallets)")
    trust: str = setting(
        "GRADIENTS_CHAIN_TRUST",
        "validator",
        "V_trust: validator (this validator's trust, one factor for all miners), miner (each miner's "
        "metagraph trust) or none (1)",
        check=one_of(*TRUST_SOURCES),
    )
    wait_for_finalization: bool = setting(
        "GRADIENTS_CHAIN_WAIT_FOR_FINALIZATION",
        False,
        "wait for finalization (not only inclusion) of each weights extrinsic",
    )
    call_timeout_s: float = setting(
        "GRADIENTS_CHAIN_CALL_TIMEOUT_S",
        120.0,
        "seconds one chain call (connect, metagraph, set) may take",
        check=positive,
    )
    retry_initial_s: float = setting(
        "GRADIENTS_CHAIN_RETRY_INITIAL_S",
        2.0,
        "first retry delay after a failed set (doubles per failure)",
        check=positive,
    )
    retry_max_s: float = setting("GRADIENTS_CHAIN_RETRY_MAX_S", 300.0, "longest retry delay", check=positive)
    idle_check_s: float = setting(
        "GRADIENTS_CHAIN_IDLE_CHECK_S",
        10.0,
        "how often an idle setter looks for pending weights (seconds)",
        check=positive,
    )
    lease_s: float = setting(
        "GRADIENTS_CHAIN_LEASE_S",
        30.0,
        "replicas: the setter lease period; a replica that died holding it is replaced within it",
        check=positive,
    )
    ledger_file: str = setting(
        "GRADIENTS_CHAIN_LEDGER_FILE",
        "",
        "ledger backend: JSONL file (empty = <GRADIENTS_DATA_DIR>/chain-ledger.jsonl)",
    )
    ledger_uids: str = setting(
        "GRADIENTS_CHAIN_LEDGER_UIDS",
        "",
        "ledger backend: JSON file {hotkey: uid} (empty = uids assigned in order of first score)",
        check=_uid_file_check,
    )
    ledger_max_weight_limit: float = setting(
        "GRADIENTS_CHAIN_LEDGER_MAX_WEIGHT_LIMIT",
        1.0,
        "ledger backend: largest share of one uid, as the chain's max_weight_limit",
        check=_max_weight_check,
    )

    def fallback_list(self) -> list[str]:
        return [u.strip() for u in self.fallback_endpoints.split(",") if u.strip()]

    def ledger_path(self, data_dir: Path) -> Path:
        return Path(self.ledger_file) if self.ledger_file else Path(data_dir) / "chain-ledger.jsonl"
