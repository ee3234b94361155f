"""Procedurally generated instruct datasets (fixed seeds) for demos and benchmarks.

Each family is learnable by a small model in minutes, so a tournament between training
strategies shows real differences: arithmetic, string transformations and key-value recall.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path

Row = dict[str, str]


def arithmetic(rng: random.Random) -> Row:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    op = rng.choice(["plus", "minus"])
    result = a + b if op == "plus" else a - b
    return {"instruction": f"what is {a} {op} {b}?", "input": "", "output": str(result)}


def string_transform(rng: random.Random) -> Row:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
    kind = rng.choice(["reverse", "upper"])
    out = word[::-1] if kind == "reverse" else word.upper()
    return {"instruction": f"{kind} the word", "input": word, "output": out}


_KEYS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "lime"]


def key_value(rng: random.Random) -> Row:
    # A fixed hidden mapping per dataset seed is learnt from the training split.
    key = rng.choice(_KEYS)
    value = _KEYS[(_KEYS.index(key) * 3 + 1) % len(_KEYS)]
    return {"instruction": "recall the value for the key", "input": key, "output": value}


FAMILIES: dict[str, Callable[[random.Random], Row]] = {
    "arithmetic": arithmetic,
    "strings": string_transform,
    "recall": key_value,
}


def generate(family: str, n_rows: int, seed: int = 0) -> list[Row]:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    rng = random.Random(f"{family}:{seed}")
    return [FAMILIES[family](rng) for _ in range(n_rows)]


def write_jsonl(rows: list[Row], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
