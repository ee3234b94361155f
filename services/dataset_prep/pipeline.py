"""prepare_dataset: load → standardise → (images) → split → synthesise → leakage check.

The one entry point the dataset_prep service calls (from a worker thread: generation is
blocking). Failures are `DatasetRejected` (the data) or `GenerationAborted` (synthesis),
each with a human-readable `reason`; a misconfiguration (no generator given) is ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.dataset_prep.errors import DatasetRejected, GenerationAborted
from services.dataset_prep.generators import Generator, ImageGenerator
from services.dataset_prep.images import (
    ImageSizing,
    fit_to_multiple,
    image_name,
    load_image,
    png_bytes,
)
from services.dataset_prep.loading import LoadOptions, load_table
from services.dataset_prep.logic import (
    SplitConfig,
    canonical_json,
    row_sha256,
    rows_sha256,
    split_rows,
    split_sizes,
)
from services.dataset_prep.schema import (
    ColumnMapping,
    DatasetSchema,
    RejectionLimits,
    TaskKind,
    standardise,
)
from services.dataset_prep.synthesis import (
    SynthesisConfig,
    synthesise_images,
    synthesise_text,
)

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)

# How many unreadable image files a rejection names before summarising.
_NAMED_BAD_IMAGES = 5


@dataclass(frozen=True)
class DatasetSpec:
    source: str  # local path, file:// URI or http(s) URL
    kind: TaskKind
    mapping: ColumnMapping = field(default_factory=ColumnMapping)
    load: LoadOptions = field(default_factory=LoadOptions)


@dataclass(frozen=True)
class PrepConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    limits: RejectionLimits = field(default_factory=RejectionLimits)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    image_sizing: ImageSizing = field(default_factory=ImageSizing)
    # Fewer kept synthetic rows than this share of |D_synth| fails the task.
    min_synth_kept_fraction: float = 0.25


@dataclass
class GeneratorSet:
    text: Generator | None = None  # G: the strong / foundation model
    weak_text: Generator | None = None  # dpo: writes the rejected responses
    image: ImageGenerator | None = None  # image tasks: draws new images


@dataclass
class PreparedSplit:
    name: str
    rows: list[dict[str, Any]]
    sha256: str  # == sha256(self.to_jsonl_bytes())
    images: dict[str, bytes] = field(default_factory=dict)  # image tasks: "<sha256>.png" -> PNG

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def to_jsonl_bytes(self) -> bytes:
        return "".join(canonical_json(r) + "\n" for r in self.rows).encode("utf-8")


@dataclass
class PrepStats:
    source_rows: int
    empty_rows: int
    duplicates_moved_to_test: int
    synth_requested: int
    synth_generated: int  # what the generators returned, before the leakage check
    synth_leaked: int  # generated rows equal to a train/test row (or to each other), dropped


@dataclass
class PreparedDataset:
    schema: DatasetSchema
    train: PreparedSplit
    test: PreparedSplit
    synth: PreparedSplit
    stats: PrepStats

    def summary(self) -> dict[str, Any]:
        """Plain data for events and logs (no rows)."""
        return {
            "schema": self.schema.to_dict(),
            "splits": {
                s.name: {"rows": s.num_rows, "sha256": s.sha256, "images": len(s.images)}
                for s in (self.train, self.test, self.synth)
            },
            "stats": vars(self.stats).copy(),
        }


def _prepare_images(
    rows: list[dict[str, Any]], sizing: ImageSizing, progress: ProgressFn
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Check, resize/crop to multiples of 64 and content-address every image."""
    out, images, bad = [], {}, []
    for index, row in enumerate(rows):
        try:
            picture = fit_to_multiple(load_image(row["image"]), sizing)
        except DatasetRejected as err:
            bad.append(err.reason)
            continue
        finally:
            progress("images", index + 1, len(rows))
        data = png_bytes(picture)
        name = image_name(data)
        images[name] = data
        out.append({**row, "image": name})
    if bad:
        more = f" (and {len(bad) - _NAMED_BAD_IMAGES} more)" if len(bad) > _NAMED_BAD_IMAGES else ""
        raise DatasetRejected("; ".join(bad[:_NAMED_BAD_IMAGES]) + more)
    return out, images


def _synthesise(
    kind: TaskKind,
    schema: DatasetSchema,
    sources: list[dict[str, Any]],
    images: dict[str, bytes],
    generators: GeneratorSet,
    config: PrepConfig,
    progress: ProgressFn,
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    if not sources:
        return [], {}
    if generators.text is None:
        raise ValueError("GeneratorSet.text is required to build the synthetic split")
    if kind is TaskKind.IMAGE:
        if generators.image is None:
            raise ValueError("GeneratorSet.image is required for image datasets")
        return synthesise_images(sources, images, generators.text, generators.image, config.synthesis, progress)
    if kind is TaskKind.DPO and generators.weak_text is None:
        raise ValueError("GeneratorSet.weak_text is required for dpo datasets (rejected answers)")
    rows = synthesise_text(kind, schema, sources, generators.text, config.synthesis, generators.weak_text, progress)
    return rows, {}


def prepare_dataset(
    spec: DatasetSpec,
    generators: GeneratorSet,
    config: PrepConfig | None = None,
    on_progress: ProgressFn | None = None,
) -> PreparedDataset:
    """Build D_train, D_test and D_synth for one task (§3.3).

    Blocking (model calls); an asyncio service runs it with `asyncio.to_thread`.
    `on_progress(stage, done, total)` is called from that same thread (an async publisher
    should hop back with `loop.call_soon_threadsafe`). Stages, in order: load, standardise,
    images (image tasks), split, synthesise, synthesise_rejected (dpo) or
    synthesise_images (image), done.
    """
    config = config or PrepConfig()
    progress: ProgressFn = on_progress or (lambda stage, done, total: None)

    progress("load", 0, 1)
    table = load_table(spec.source, spec.load)
    progress("load", 1, 1)
    standard = standardise(table, spec.kind, spec.mapping, config.limits)
    progress("standardise", 1, 1)
    rows, images = standard.rows, {}
    if spec.kind is TaskKind.IMAGE:
        rows, images = _prepare_images(rows, config.image_sizing, progress)

    split = split_rows(rows, config.split)
    progress("split", 1, 1)
    _, n_synth = split_sizes(len(rows), config.split)
    generated, synth_images = _synthesise(
        spec.kind, standard.schema, split.synth_sources, images, generators, config, progress
    )

    # No synthetic row may equal a train or test row (or another synthetic row).
    taken = {row_sha256(r) for r in split.train} | {row_sha256(r) for r in split.test}
    synth = []
    for row in generated:
        h = row_sha256(row)
        if h not in taken:
            taken.add(h)
            synth.append(row)
    needed = math.ceil(config.min_synth_kept_fraction * n_synth)
    if len(synth) < needed:
        raise GenerationAborted(
            f"only {len(synth)} of {n_synth} synthetic rows survived generation and the "
            f"leakage check; at least {needed} are required"
        )

    def prepared(name: str, rows_: list[dict[str, Any]], pool: dict[str, bytes]) -> PreparedSplit:
        own_images = {r["image"]: pool[r["image"]] for r in rows_} if pool else {}
        return PreparedSplit(name, rows_, rows_sha256(rows_), own_images)

    result = PreparedDataset(
        schema=standard.schema,
        train=prepared("train", split.train, images),
        test=prepared("test", split.test, images),
        synth=prepared("synth", synth, synth_images),
        stats=PrepStats(
            source_rows=standard.total_rows,
            empty_rows=standard.empty_rows,
            duplicates_moved_to_test=split.duplicates_moved_to_test,
            synth_requested=n_synth,
            synth_generated=len(generated),
            synth_leaked=len(generated) - len(synth),
        ),
    )
    progress("done", 1, 1)
    return result
