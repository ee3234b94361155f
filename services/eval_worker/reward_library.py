"""Built-in GRPO reward functions (standard library only).

This file is also sent as source code to the reward sandbox, because even the built-ins take
task-supplied parameters (a regex can backtrack for ever), so they run with the same limits as
user code. Every function has the signature

    reward(completions: list[str], prompts: list[str], columns: dict[str, list], params: dict[str, str]) -> list[float]

where columns[name][i] is the dataset column `name` of completion i's row, and params are the
task's string parameters. Rewards are in [0, 1].
"""

import re
from typing import Any

NUMBER_PATTERN = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _param(params: dict[str, str], name: str, default: str | None = None) -> str:
    value = params.get(name, default)
    if value is None:
        raise ValueError(f"reward parameter {name!r} is required")
    return value


def _column(columns: dict[str, list[Any]], name: str, n: int) -> list[Any]:
    if name not in columns:
        raise ValueError(f"reward needs the dataset column {name!r}")
    values = columns[name]
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def format_reward(
    completions: list[str], prompts: list[str], columns: dict[str, list[Any]], params: dict[str, str]
) -> list[float]:
    """1 if the completion matches params['pattern'] (params['mode']: search | fullmatch)."""
    pattern = re.compile(_param(params, "pattern"), re.DOTALL)
    mode = params.get("mode", "search")
    if mode not in ("search", "fullmatch"):
        raise ValueError(f"format mode must be search or fullmatch, got {mode!r}")
    match = pattern.fullmatch if mode == "fullmatch" else pattern.search
    return [1.0 if match(c.strip()) else 0.0 for c in completions]


def length_reward(
    completions: list[str], prompts: list[str], columns: dict[str, list[Any]], params: dict[str, str]
) -> list[float]:
    """max(0, 1 - |len(c) - target| / target), lengths in characters (params['target'])."""
    target = float(_param(params, "target"))
    if target <= 0:
        raise ValueError("length target must be positive")
    return [max(0.0, 1.0 - abs(len(c) - target) / target) for c in completions]


def exact_match_reward(
    completions: list[str], prompts: list[str], columns: dict[str, list[Any]], params: dict[str, str]
) -> list[float]:
    """1 if the stripped completion equals the row's answer column (params['column'], default answer)."""
    answers = _column(columns, params.get("column", "answer"), len(completions))
    fold = params.get("case_sensitive", "false").lower() != "true"
    out: list[float] = []
    for c, a in zip(completions, answers):
        c, a = c.strip(), str(a).strip()
        if fold:
            c, a = c.lower(), a.lower()
        out.append(1.0 if c == a else 0.0)
    return out


def numeric_match_reward(
    completions: list[str], prompts: list[str], columns: dict[str, list[Any]], params: dict[str, str]
) -> list[float]:
    """1 if the last number in the completion is within tolerance of the answer column."""
    answers = _column(columns, params.get("column", "answer"), len(completions))
    tolerance = float(params.get("tolerance", "1e-6"))
    out: list[float] = []
    for c, a in zip(completions, answers):
        numbers = NUMBER_PATTERN.findall(c)
        try:
            expected = float(a)
        except (TypeError, ValueError):
            out.append(0.0)
            continue
        if not numbers:
            out.append(0.0)
            continue
        got = float(numbers[-1])
        out.append(1.0 if abs(got - expected) <= tolerance * max(1.0, abs(expected)) else 0.0)
    return out


def keyword_reward(
    completions: list[str], prompts: list[str], columns: dict[str, list[Any]], params: dict[str, str]
) -> list[float]:
    """Fraction of params['keywords'] (comma separated) present in the completion (case-insensitive)."""
    keywords = [k.strip().lower() for k in _param(params, "keywords").split(",") if k.strip()]
    if not keywords:
        raise ValueError("keyword reward needs at least one keyword")
    return [sum(1 for k in keywords if k in c.lower()) / len(keywords) for c in completions]


BUILTIN_REWARDS = {
    "format": "format_reward",
    "length": "length_reward",
    "exact_match": "exact_match_reward",
    "numeric_match": "numeric_match_reward",
    "keyword": "keyword_reward",
}
