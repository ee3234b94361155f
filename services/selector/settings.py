"""Settings of the selector and its miner gateway (GRADIENTS_SELECTOR_*)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gradients.limits import MAX_SUBMISSION_BYTES
from gradients.runtime.config import non_negative, one_of, port_check, positive, setting
from services.selector.logic import PoolSizeConfig


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be >= 1"


@dataclass(frozen=True)
class SelectorSettings:
    offer_timeout_s: float = setting(
        "GRADIENTS_SELECTOR_OFFER_TIMEOUT_S",
        3.0,
        "seconds a miner has to answer an offer; no answer = decline",
        check=positive,
    )
    text_pool_min: int = setting(
        "GRADIENTS_SELECTOR_TEXT_POOL_MIN", 8, "fewest miners drawn for a text task (§3.7)", check=_at_least_one
    )
    text_pool_max: int = setting(
        "GRADIENTS_SELECTOR_TEXT_POOL_MAX", 15, "most miners drawn for a text task (§3.7)", check=_at_least_one
    )
    image_pool_min: int = setting(
        "GRADIENTS_SELECTOR_IMAGE_POOL_MIN", 15, "fewest miners drawn for an image task (§3.7)", check=_at_least_one
    )
    image_pool_max: int = setting(
        "GRADIENTS_SELECTOR_IMAGE_POOL_MAX", 25, "most miners drawn for an image task (§3.7)", check=_at_least_one
    )
    gateway_port: int | None = setting(
        "GRADIENTS_SELECTOR_GATEWAY_PORT",
        None,
        "public port of the miner gateway (empty = served on the selector's own gRPC port; 0 = any free port)",
        check=port_check,
    )
    auth_mode: str = setting(
        "GRADIENTS_SELECTOR_AUTH_MODE",
        "allowlist",
        "who may call the gateway: allowlist (GRADIENTS_SELECTOR_ALLOWED_HOTKEYS) or metagraph (hotkeys registered on the subnet)",
        check=one_of("allowlist", "metagraph"),
    )
    allowed_hotkeys: tuple[str, ...] = setting(
        "GRADIENTS_SELECTOR_ALLOWED_HOTKEYS",
        (),
        "comma-separated miner hotkeys (ss58) allowed in allowlist mode; uid = position",
    )
    network: str = setting(
        "GRADIENTS_SELECTOR_NETWORK", "finney", "bittensor network or ws(s):// endpoint for the metagraph"
    )
    netuid: int = setting(
        "GRADIENTS_SELECTOR_NETUID", 56, "subnet whose registered hotkeys may mine (metagraph mode)", check=non_negative
    )
    metagraph_refresh_s: float = setting(
        "GRADIENTS_SELECTOR_METAGRAPH_REFRESH_S",
        600.0,
        "seconds between metagraph refreshes (metagraph mode)",
        check=positive,
    )
    validator_hotkey: str = setting(
        "GRADIENTS_SELECTOR_VALIDATOR_HOTKEY",
        "",
        "this validator's hotkey ss58, the receiver miners sign for (empty = from the validator wallet)",
    )
    validator_wallet_name: str = setting(
        "GRADIENTS_SELECTOR_WALLET_NAME", "validator", "validator wallet (coldkey) name"
    )
    validator_wallet_hotkey: str = setting(
        "GRADIENTS_SELECTOR_WALLET_HOTKEY", "default", "validator wallet hotkey name"
    )
    validator_wallet_path: Path | None = setting(
        "GRADIENTS_SELECTOR_WALLET_PATH",
        None,
        "wallets folder (empty = <GRADIENTS_DATA_DIR>/wallets; in allowlist mode a missing hotkey is created there)",
    )
    auth_max_age_s: float = setting(
        "GRADIENTS_SELECTOR_AUTH_MAX_AGE_S", 10.0, "oldest signature nonce accepted (seconds)", check=positive
    )
    auth_allowed_skew_s: float = setting(
        "GRADIENTS_SELECTOR_AUTH_ALLOWED_SKEW_S",
        2.0,
        "how far ahead of our clock a nonce may be (seconds)",
        check=non_negative,
    )
    max_upload_bytes: int = setting(
        "GRADIENTS_SELECTOR_MAX_UPLOAD_BYTES",
        MAX_SUBMISSION_BYTES,
        "largest submission archive accepted (bytes; keep it at most GRADIENTS_EVAL_MAX_UPLOAD_GB)",
        check=positive,
    )
    chunk_bytes: int = setting(
        "GRADIENTS_SELECTOR_CHUNK_BYTES",
        1024 * 1024,
        "bytes per streamed chunk of training data (under gRPC's 4 MiB message limit)",
        check=lambda v: None if 1024 <= v <= 3 * 1024 * 1024 else "must be between 1 KiB and 3 MiB",
    )
    session_ttl_s: float = setting(
        "GRADIENTS_SELECTOR_SESSION_TTL_S",
        15.0,
        "a miner counts as connected this long after its session's last heartbeat",
        check=positive,
    )
    results_kept: int = setting(
        "GRADIENTS_SELECTOR_RESULTS_KEPT", 50, "recent tasks kept per miner for GetMyResults", check=_at_least_one
    )
    rate_limit_per_s: float = setting(
        "GRADIENTS_SELECTOR_RATE_LIMIT_PER_S",
        20.0,
        "gateway calls per second one miner hotkey may make, sustained, per replica; more are refused with "
        "RESOURCE_EXHAUSTED (0 = no limit)",
        check=non_negative,
    )
    rate_limit_burst: int = setting(
        "GRADIENTS_SELECTOR_RATE_LIMIT_BURST",
        100,
        "gateway calls one miner hotkey may make at once before GRADIENTS_SELECTOR_RATE_LIMIT_PER_S applies",
        check=_at_least_one,
    )

    def pool_sizes(self) -> PoolSizeConfig:
        return PoolSizeConfig(self.text_pool_min, self.text_pool_max, self.image_pool_min, self.image_pool_max)
