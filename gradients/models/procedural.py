"""Procedurally generated instruct datasets (fixed seeds) for demos and benchmarks.

Each family is learnable by a small model in minutes, so a tournament between training
strategies shows real differences: arithmetic, string transformations, key-value recall, and
four output-format families a pretrained 135M model learns in tens of seconds (date
rewriting, sorting numbers, fields to JSON, parity words). Rows depend only on (family, seed).
`distinct` gives rows without repeats, for splits that must not share a row.
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
    # A fixed hidden mapping of 64 two-word keys, learnt from the training split. (Eight keys
    # made only eight distinct rows: a 10 % test split of 120 rows took all of them, and
    # dataset preparation rightly refused a dataset with no training rows left.)
    first, second = rng.randrange(len(_KEYS)), rng.randrange(len(_KEYS))
    value = _KEYS[(first * 3 + second * 5 + 1) % len(_KEYS)]
    return {"instruction": "recall the value for the key", "input": f"{_KEYS[first]} {_KEYS[second]}", "output": value}


def date_rewrite(rng: random.Random) -> Row:
    year, month, day = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    return {
        "instruction": "rewrite the date as day/month/year",
        "input": f"{year:04d}-{month:02d}-{day:02d}",
        "output": f"{day:02d}/{month:02d}/{year:04d}",
    }


def sort_numbers(rng: random.Random) -> Row:
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 5))]
    return {
        "instruction": "sort the numbers from smallest to largest",
        "input": " ".join(map(str, numbers)),
        "output": " ".join(map(str, sorted(numbers))),
    }


_NAMES = ["alice", "bruno", "chen", "dara", "emil", "fatima", "goran", "hana", "ivan", "jun", "kofi", "lena"]
_CITIES = ["paris", "lima", "oslo", "cairo", "quito", "seoul", "accra", "perth", "riga", "tunis"]


def fields_to_json(rng: random.Random) -> Row:
    name, age, city = rng.choice(_NAMES), rng.randint(18, 90), rng.choice(_CITIES)
    return {
        "instruction": "write the record as JSON",
        "input": f"{name}, {age}, {city}",
        "output": json.dumps({"name": name, "age": age, "city": city}),
    }


def parity(rng: random.Random) -> Row:
    n = rng.randint(100, 99999)
    return {
        "instruction": "is the number even or odd? answer with one word",
        "input": str(n),
        "output": "even" if n % 2 == 0 else "odd",
    }


# The demo's instruct pool (gradients demo and other benchmarks iterate over these).
FAMILIES: dict[str, Callable[[random.Random], Row]] = {
    "arithmetic": arithmetic,
    "strings": string_transform,
    "recall": key_value,
}
# Output-format families (benchmarks.tournament_vs_default); `generate` knows both.
FORMAT_FAMILIES: dict[str, Callable[[random.Random], Row]] = {
    "dates": date_rewrite,
    "sorting": sort_numbers,
    "json": fields_to_json,
    "parity": parity,
}
ALL_FAMILIES = {**FAMILIES, **FORMAT_FAMILIES}


def generate(family: str, n_rows: int, seed: int = 0) -> list[Row]:
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(ALL_FAMILIES)}")
    rng = random.Random(f"{family}:{seed}")
    return [ALL_FAMILIES[family](rng) for _ in range(n_rows)]


def row_key(row: Row) -> str:
    return json.dumps(row, sort_keys=True)


def distinct(rows_of: Callable[[int], list[Row]], n_rows: int, max_tries: int = 20) -> list[Row]:
    """The first n_rows distinct rows of a seeded generator (rows_of(k): its first k rows),
    asking for more until enough distinct ones came; a ValueError when the family cannot."""
    asked = n_rows
    for _ in range(max_tries):
        seen: set[str] = set()
        out = []
        for row in rows_of(asked):
            key = row_key(row)
            if key not in seen:
                seen.add(key)
                out.append(row)
                if len(out) == n_rows:
                    return out
        asked *= 2
    raise ValueError(f"the generator has fewer than {n_rows} distinct rows")


def generate_distinct(family: str, n_rows: int, seed: int = 0) -> list[Row]:
    return distinct(lambda k: generate(family, k, seed), n_rows)


def write_jsonl(rows: list[Row], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def preference_rows(n_rows: int, seed: int = 0) -> list[Row]:
    """DPO rows: the correct sum is chosen, an off-by-some answer rejected."""
    rng = random.Random(f"dpo:{seed}")
    rows = []
    for _ in range(n_rows):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"what is {a} plus {b}?", "chosen": str(a + b), "rejected": str(wrong)})
    return rows


def reward_rows(n_rows: int, seed: int = 0) -> list[Row]:
    """GRPO rows: a prompt and the `answer` column the numeric_match reward reads."""
    rng = random.Random(f"grpo:{seed}")
    rows = []
    for _ in range(n_rows):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        rows.append({"prompt": f"what is {a} plus {b}?", "answer": str(a + b)})
    return rows


_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def image_folder(out_dir: Path, n_images: int, seed: int = 0, size: int = 64) -> Path:
    """Images of coloured shapes with `.txt` captions (the image_folder dataset format)."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"images:{seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        colour = rng.choice(list(_COLOURS))
        shape = rng.choice(["square", "circle"])
        img = Image.new("RGB", (size, size), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        lo, hi = rng.randint(4, size // 3), rng.randint(2 * size // 3, size - 4)
        (draw.rectangle if shape == "square" else draw.ellipse)([lo, lo, hi, hi], fill=_COLOURS[colour])
        img.save(out / f"img{i:03d}.png")
        (out / f"img{i:03d}.txt").write_text(f"a {colour} {shape} on a white background")
    return out
