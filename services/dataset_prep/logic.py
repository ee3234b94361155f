"""dataset_prep's pure rules: D = D_train ∪ D_test ∪ D_synth (§3.3), deterministic in (rows, seed).

No I/O: loading, image files, generators and the artifact store are elsewhere; this module only
decides which row goes where, and names rows and splits by their content hash.

|D_test| = min(floor(|D|·ρ_test), κ_test) and |D_synth| = min(floor(|D|·ρ_synth), κ_synth).
D_synth is not cut from D: it is generated, x'_i = G(x_i, τ), from a sample of
|D_synth| source rows; this module picks that sample, `synthesis.py` generates.

Determinism without depending on input order: every row gets a rank key
sha256(purpose : seed : row hash : occurrence), and rows are taken in key order. The same
multiset of rows and seed therefore gives the same splits, in the same order, whatever
order the file listed them in.

Leakage: a row identical (same content hash) to a test row never stays in train — it goes
to test only. The test split itself holds no duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from services.dataset_prep.errors import DatasetRejected


@dataclass(frozen=True)
class SplitConfig:
    test_fraction: float = 0.1  # ρ_test
    test_cap: int = 1000  # κ_test
    synth_fraction: float = 1.0  # ρ_synth
    synth_cap: int = 300  # κ_synth
    seed: int = 42
    # Where the synthetic source sample x_i comes from: the whole dataset (the paper's
    # D_sample) or the test split (what the reference validator does).
    synth_source: Literal["dataset", "test"] = "dataset"

    def __post_init__(self) -> None:
        for name in ("test_fraction", "synth_fraction"):
            if getattr(self, name) < 0:
                raise ValueError(f"SplitConfig.{name} must be >= 0")
        for name in ("test_cap", "synth_cap"):
            if getattr(self, name) < 0:
                raise ValueError(f"SplitConfig.{name} must be >= 0")
        if self.synth_source not in ("dataset", "test"):
            raise ValueError("SplitConfig.synth_source must be 'dataset' or 'test'")


def split_sizes(n_rows: int, config: SplitConfig = SplitConfig()) -> tuple[int, int]:
    """(|D_test|, |D_synth|) for a dataset of n_rows usable rows."""
    n_test = min(math.floor(n_rows * config.test_fraction + 1e-9), config.test_cap)
    n_synth = min(math.floor(n_rows * config.synth_fraction + 1e-9), config.synth_cap)
    return n_test, n_synth


def canonical_json(row: Any) -> str:
    """One canonical text per row: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_sha256(row: Any) -> str:
    return hashlib.sha256(canonical_json(row).encode("utf-8")).hexdigest()


def rows_sha256(rows: Iterable[Any]) -> str:
    """sha256 of the split as JSONL: one canonical JSON row per line, each ending in \\n."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json(row).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _ranked(hashes: list[str], purpose: str, seed: int) -> list[int]:
    """Row indices in the order of their rank keys for this purpose and seed."""
    occurrence: Counter[str] = Counter()
    keys = []
    for index, h in enumerate(hashes):
        key = hashlib.sha256(f"{purpose}:{seed}:{h}:{occurrence[h]}".encode()).hexdigest()
        occurrence[h] += 1
        keys.append((key, index))
    return [index for _, index in sorted(keys)]


@dataclass
class Split:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    synth_sources: list[dict[str, Any]]  # the x_i to feed the generator, |D_synth| of them
    duplicates_moved_to_test: int  # rows left out of train because they equal a test row


def split_rows(rows: list[dict[str, Any]], config: SplitConfig = SplitConfig()) -> Split:
    """Split standardised rows; see the module docstring for the guarantees."""
    n_test, n_synth = split_sizes(len(rows), config)
    hashes = [row_sha256(r) for r in rows]

    test_idx: list[int] = []
    test_hashes: set[str] = set()
    for i in _ranked(hashes, "test", config.seed):
        if len(test_idx) == n_test:
            break
        if hashes[i] not in test_hashes:
            test_idx.append(i)
            test_hashes.add(hashes[i])

    train_order = _ranked(hashes, "train", config.seed)
    train_idx = [i for i in train_order if hashes[i] not in test_hashes]
    moved = len(rows) - len(test_idx) - len(train_idx)
    if not train_idx:
        raise DatasetRejected("no training rows left: every row is in the test split or identical to a test row")

    # Source sample for D_synth: distinct rows, cycled if the pool is smaller than asked.
    pool_idx = list(test_idx) if config.synth_source == "test" else list(range(len(rows)))
    pool_hashes = [hashes[i] for i in pool_idx]
    seen: set[str] = set()
    pool = []
    for j in _ranked(pool_hashes, "synth", config.seed):
        if pool_hashes[j] not in seen:
            seen.add(pool_hashes[j])
            pool.append(pool_idx[j])
    sources = [rows[pool[k % len(pool)]] for k in range(n_synth)] if pool else []

    return Split(
        train=[rows[i] for i in train_idx],
        test=[rows[i] for i in test_idx],
        synth_sources=sources,
        duplicates_moved_to_test=moved,
    )
