"""Gradients miner SDK: connect to a validator, take offers, download data, upload models.

    from miner_sdk import MinerClient
    async with MinerClient(address, wallet, validator_hotkey) as client:
        async for offer in client.offers(): ...

See miner_sdk/README.md. Names are imported lazily, so `miner_sdk.training` and
`miner_sdk.archive` stay cheap to import.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "MinerClient": "miner_sdk.client",
    "ReceivedOffer": "miner_sdk.client",
    "GatewayRefused": "miner_sdk.client",
    "Backoff": "miner_sdk.client",
    "sign_call": "miner_sdk.client",
    "pack": "miner_sdk.archive",
    "safe_extract": "miner_sdk.archive",
    "UnsafeArchive": "miner_sdk.archive",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'miner_sdk' has no attribute {name!r}")
