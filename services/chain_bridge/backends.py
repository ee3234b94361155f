"""Where weight vectors go: a local ledger (embedded default) or a bittensor subtensor.

A backend answers two questions and does one thing:
  - `view(hotkeys)`: hotkey → uid, V_trust, the subnet's max weight share, and how long the
    rate limit still forbids a set (the "metagraph sync");
  - `set_weights(submission)`: record / submit one quantised vector, returning a receipt with
    a monotonically increasing sequence number.
Failures are `ChainUnavailable` (endpoint unreachable or a call timed out: retried with
backoff, reported as not reachable), `RateLimited` (wait, then retry; not a failure) or any
other exception (the chain refused: retried with backoff, reported as reachable).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from redis.exceptions import WatchError

from gradients.runtime import ConfigError, Store
from services.chain_bridge.logic import ChainWeights, blocks_until_can_set
from services.chain_bridge.settings import ChainBridgeSettings, load_uid_mapping

log = logging.getLogger(__name__)
U16_MAX = 65535


class ChainUnavailable(Exception):
    """The chain endpoint cannot be reached (or a call to it timed out)."""


class RateLimited(Exception):
    """Weights were set too recently; retry after `wait_s` seconds."""

    def __init__(self, message: str, wait_s: float):
        super().__init__(message)
        self.wait_s = wait_s


@dataclass(frozen=True)
class ChainView:
    hotkey_to_uid: dict[str, int]
    trust: dict[str, float] | None  # None: V_trust = 1 for every miner
    max_weight_limit: float  # largest share of one uid, in (0, 1]
    blocks_to_wait: int = 0  # rate limit: blocks before a set is allowed (0 = now)
    block_time_s: float = 12.0


@dataclass(frozen=True)
class WeightsSubmission:
    weights: ChainWeights
    version_key: int
    scores_digest: str
    scores_at_us: int  # "now" of the scorer computation these weights come from


@dataclass(frozen=True)
class SetReceipt:
    sequence: int
    detail: str = ""


class WeightsBackend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def view(self, hotkeys: Sequence[str]) -> ChainView: ...

    async def set_weights(self, submission: WeightsSubmission) -> SetReceipt: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- ledger


def ledger_line(sequence: int, submission: WeightsSubmission, set_at: float) -> dict:
    w = submission.weights
    return {
        "sequence": sequence,
        "uids": list(w.u16_uids),
        "weights_u16": list(w.u16_values),
        "weights": [[uid, value] for uid, value in zip(w.uids, w.weights)],
        "version_key": submission.version_key,
        "scores_digest": submission.scores_digest,
        "scores_at_us": submission.scores_at_us,
        "set_at": set_at,
    }


class LedgerBackend:
    """Weight vectors appended to a Redis stream (`<ns>:chain-ledger`, entry id "<seq>-0") and
    mirrored to a JSONL file. Redis is the record; the file is re-synchronised from it at start
    (a crash between the two leaves the file one line short, never out of order)."""

    name = "ledger"

    def __init__(
        self, store: Store, path: Path, uid_mapping: dict[str, int] | None = None, max_weight_limit: float = 1.0
    ):
        self.store = store
        self.path = Path(path)
        self.static_uids = uid_mapping
        self.max_weight_limit = max_weight_limit
        self.stream_key = store.key("chain-ledger")
        self.seq_key = store.key("chain-ledger-seq")
        self.uids_key = store.key("chain-ledger-uids")

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self.sync_file()

    async def close(self) -> None:
        pass

    async def view(self, hotkeys: Sequence[str]) -> ChainView:
        uids = dict(self.static_uids) if self.static_uids is not None else await self.assign_uids(hotkeys)
        return ChainView(uids, None, self.max_weight_limit, 0, 0.0)

    async def assign_uids(self, hotkeys: Sequence[str]) -> dict[str, int]:
        """uids in order of first appearance (new hotkeys of one update in sorted order),
        persisted so a miner keeps its uid."""
        redis = self.store.redis
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.uids_key)
                    known = {k.decode(): int(v) for k, v in (await pipe.hgetall(self.uids_key)).items()}
                    new = sorted(set(hotkeys) - set(known))
                    if not new:
                        return known
                    if len(known) + len(new) > U16_MAX + 1:
                        raise ValueError(f"the ledger has no uid left for {len(new)} new hotkeys (max {U16_MAX + 1})")
                    added = {hk: len(known) + i for i, hk in enumerate(new)}
                    pipe.multi()
                    pipe.hset(self.uids_key, mapping={hk: str(uid) for hk, uid in added.items()})
                    await pipe.execute()
                    return {**known, **added}
                except WatchError:
                    continue

    async def set_weights(self, submission: WeightsSubmission) -> SetReceipt:
        sequence = int(await self.store.redis.incr(self.seq_key))
        line = ledger_line(sequence, submission, time.time())
        await self.store.redis.xadd(self.stream_key, {b"entry": json.dumps(line).encode()}, id=f"{sequence}-0")
        self._append([line])
        return SetReceipt(sequence, f"ledger entry {sequence}")

    async def entries(self, after: int = 0) -> list[dict]:
        rows = await self.store.redis.xrange(self.stream_key, min=f"({after}-0" if after else "-", max="+")
        return [json.loads(fields[b"entry"]) for _, fields in rows]

    async def sync_file(self) -> int:
        """Append the stream entries the file lacks; returns how many."""
        self._drop_torn_tail()
        missing = await self.entries(after=self._last_file_sequence())
        self._append(missing)
        return len(missing)

    def _drop_torn_tail(self) -> None:
        """A crash mid-write leaves a last line without its newline: cut it (the stream has it)."""
        if not self.path.exists():
            return
        with self.path.open("r+b") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _last_file_sequence(self) -> int:
        if not self.path.exists():
            return 0
        last = 0
        with self.path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    last = int(json.loads(raw)["sequence"])
        return last

    def _append(self, lines: list[dict]) -> None:
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------- bittensor


class BittensorBackend:
    """The bittensor 11 SDK against a configured network.

    One `Client` connection, reopened after a failure. `view` reads the metagraph (hotkey →
    uid, trust, our hotkey's last update), the weights rate limit and max weight limit; the
    set is `SetWeights`, which picks the plain or the timelocked commit-reveal extrinsic as
    the subnet requires, conforms the vector to the subnet (clip + u16) and preflights the
    rate limit and registration. The SDK retries transient pool rejections (`retries`);
    everything else is retried here with backoff.
    """

    name = "bittensor"

    def __init__(self, settings: ChainBridgeSettings, store: Store):
        import bittensor as bt
        from bittensor.wallet import DEFAULT_WALLET_PATH

        self.settings = settings
        self.store = store
        self.seq_key = store.key("chain-set-seq")
        path = os.path.expanduser(settings.wallet_path or DEFAULT_WALLET_PATH)
        self.wallet = bt.Wallet(settings.wallet_name, settings.wallet_hotkey, path=path)
        try:
            self.hotkey_ss58 = self.wallet.hotkey.ss58_address
        except Exception as exc:
            raise ConfigError(
                [
                    f"GRADIENTS_CHAIN_WALLET_NAME/HOTKEY/PATH: cannot load hotkey {settings.wallet_name}/"
                    f"{settings.wallet_hotkey} under {path}: {type(exc).__name__}: {exc}",
                ]
            ) from None
        self._client = None
        self._block_time_s = 12.0

    async def start(self) -> None:
        log.info(
            "chain backend bittensor: network %s, netuid %d, hotkey %s",
            self.settings.network,
            self.settings.netuid,
            self.hotkey_ss58,
        )

    async def close(self) -> None:
        await self._reset()

    async def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 5)
            except Exception:
                pass

    async def _call(self, what: str, coro):
        """Run one chain call with the timeout; connection-level failures → ChainUnavailable."""
        from bittensor.result import ChainError

        try:
            return await asyncio.wait_for(coro, self.settings.call_timeout_s)
        except ChainError:
            raise  # the chain answered: not a connectivity problem
        except TimeoutError as exc:
            await self._reset()
            raise ChainUnavailable(
                f"{what}: no answer from {self.settings.network} within {self.settings.call_timeout_s:g}s"
            ) from exc
        except Exception as exc:
            await self._reset()
            raise ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def _connected(self):
        if self._client is None:
            from bittensor.client import Client

            s = self.settings
            client = Client(s.network, fallback_endpoints=s.fallback_list() or None)
            self._client = client
            await self._call(f"connect to {s.network}", client.connect())
        return self._client

    async def view(self, hotkeys: Sequence[str]) -> ChainView:
        from bittensor.hyperparams import ratio_fraction

        s = self.settings
        client = await self._connected()
        metagraph = await self._call("metagraph", client.subnets.metagraph(s.netuid, commitments=False))
        if metagraph is None:
            raise LookupError(f"netuid {s.netuid} does not exist on {s.network}")
        rate_limit = await self._call("weights_rate_limit", client.hyperparameters.weights_rate_limit(s.netuid))
        max_limit = await self._call("max_weight_limit", client.hyperparameters.max_weight_limit(s.netuid))
        block_time = await self._call("block_time", client.block_time())
        uids = {n.hotkey: n.uid for n in metagraph.neurons}
        ours = metagraph.by_hotkey(self.hotkey_ss58)
        if ours is None:
            raise LookupError(f"validator hotkey {self.hotkey_ss58} is not registered on netuid {s.netuid}")
        trust: dict[str, float] | None = None
        if s.trust == "miner":
            trust = {n.hotkey: n.trust for n in metagraph.neurons}
        elif s.trust == "validator":
            from bittensor._generated.storage import SubtensorModule

            column = await self._call("validator_trust", client.query(SubtensorModule.ValidatorTrust, [s.netuid])) or []
            v = ratio_fraction("PerU16", int(column[ours.uid] or 0)) if ours.uid < len(column) else None
            # One factor for every miner (the paper's unsubscripted V_trust): it cancels in the
            # normalisation; a validator without trust yet still sets weights (factor 1).
            factor = v if v else 1.0
            trust = {hk: factor for hk in uids}
        self._block_time_s = float(block_time or 12.0)
        limit = (int(max_limit) if max_limit is not None else U16_MAX) / U16_MAX
        wait = blocks_until_can_set(ours.last_update or None, metagraph.block, int(rate_limit or 0))
        return ChainView(uids, trust, limit if limit > 0 else 1.0, wait, self._block_time_s)

    async def set_weights(self, submission: WeightsSubmission) -> SetReceipt:
        from bittensor.intents.weights import SetWeights
        from bittensor.result import ChainError, ErrorCode

        s = self.settings
        client = await self._connected()
        w = submission.weights
        # The SDK conforms these floats again exactly as chain_weights did (clip, normalise):
        # what it submits is what the ledger would record.
        intent = SetWeights(
            netuid=s.netuid,
            uids=list(w.uids),
            weights=list(w.weights),
            mechid=s.mechid,
            version_key=submission.version_key,
        )
        try:
            result = await self._call(
                "set_weights",
                client.execute(
                    intent,
                    self.wallet,
                    wait_for_inclusion=True,
                    wait_for_finalization=s.wait_for_finalization,
                    retries=2,
                ),
            )
            result.raise_for_failure()
        except ChainError as exc:
            if exc.code == ErrorCode.RATE_LIMITED:
                raise RateLimited(str(exc), wait_s=self._block_time_s) from exc
            raise
        sequence = int(await self.store.redis.incr(self.seq_key))
        mode = "commit-reveal" if "reveal_round" in (result.data or {}) else "direct"
        return SetReceipt(sequence, f"{mode} set in {result.extrinsic_id or result.block_hash or '?'}")


def make_backend(settings: ChainBridgeSettings, store: Store, data_dir: Path) -> WeightsBackend:
    if settings.backend == "bittensor":
        return BittensorBackend(settings, store)
    mapping = load_uid_mapping(Path(settings.ledger_uids)) if settings.ledger_uids else None
    return LedgerBackend(store, settings.ledger_path(data_dir), mapping, settings.ledger_max_weight_limit)
