"""Building D_synth: x'_i = G(x_i, τ) per task kind, keeping the standard schema.

- instruct: instruction / input / output rewritten (fields empty in the source stay empty;
  the system prompt is copied, it is part of the task, not of the example).
- chat: every non-system turn rewritten, same roles in the same order.
- dpo: the strong generator writes a new prompt and its `chosen` answer; the weak generator
  answers that new prompt, giving `rejected` (§3.3: models of different capabilities).
- grpo: the prompt is reworded so that whatever the reward functions check stays valid;
  the extra columns they read are copied from the source row.
- image: the caption is varied by the text generator at τ = 0.4, the image generator draws a
  new image for it at the source's resolution R_i (capped, divisible by 64).
Rows whose generation failed are dropped here; leakage checks happen in `pipeline.py`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from services.dataset_prep.generators import Generator, ImageGenerator, RowRequest
from services.dataset_prep.images import (
    ImageSizing,
    cover_crop,
    image_name,
    png_bytes,
    snap_size,
)
from services.dataset_prep.logic import row_sha256
from services.dataset_prep.schema import DatasetSchema, TaskKind

StageProgressFn = Callable[[str, int, int], None]  # (stage, done, total)

TASK_TEXT = {
    TaskKind.INSTRUCT: (
        "Write a new example of the same task, in the same style, language and format as the "
        "original, but about different specifics. Keep the answer correct for the new instruction."
    ),
    TaskKind.CHAT: (
        "Write a new conversation of the same kind, in the same style and language, with the "
        "same turns in the same order. Each key is one turn."
    ),
    TaskKind.DPO: (
        "Write a new prompt in the same style and language as the original, and a helpful, "
        "correct, high-quality response to it as 'chosen'."
    ),
    TaskKind.GRPO: (
        "Reword the prompt: same meaning, same difficulty, same expected answer and format, different wording."
    ),
    TaskKind.IMAGE: (
        "Write a variation of this image prompt: keep the subject and the visual style, vary "
        "details such as composition, lighting, colours or setting."
    ),
}
DPO_REJECTED_TASK = "Respond to the prompt."


@dataclass(frozen=True)
class SynthesisConfig:
    text_temperature: float = 0.6  # τ for text rows (§3.3)
    image_prompt_temperature: float = 0.4  # τ for image prompts (§3.3)
    image_max_side: int = 1024  # cap on R_i for synthetic images
    seed: int = 42


def _variants(sources: Sequence[dict[str, Any]]) -> list[int]:
    """0 for a source's first appearance, 1 for its second... (sources may be cycled)."""
    seen: dict[str, int] = {}
    out = []
    for row in sources:
        key = row_sha256(row)
        out.append(seen.get(key, 0))
        seen[key] = out[-1] + 1
    return out


def _stage(on_progress: StageProgressFn | None, stage: str) -> Callable[[int, int], None] | None:
    if on_progress is None:
        return None
    return lambda done, total: on_progress(stage, done, total)


def _chat_key(index: int, role: str) -> str:
    return f"turn_{index + 1}_{role}"


def task_seed(base_seed: int, task_id: str) -> int:
    """The generation seed of one task: the configured seed mixed with the task id, so two
    tasks over one dataset get different synthetic rows and a re-run of a task the same."""
    if not task_id:
        return base_seed
    digest = hashlib.sha256(f"{base_seed}:{task_id}".encode()).hexdigest()
    return int(digest[:8], 16)


def _text_request(
    kind: TaskKind,
    schema: DatasetSchema,
    row: dict[str, Any],
    temperature: float,
    variant: int,
    seed: int = 0,
) -> RowRequest:
    if kind is TaskKind.INSTRUCT:
        shown = {f: row[f] for f in ("instruction", "input", "output") if row.get(f, "").strip()}
    elif kind is TaskKind.CHAT:
        shown = {
            _chat_key(i, m["role"]): m["content"] for i, m in enumerate(row["conversations"]) if m["role"] != "system"
        }
    elif kind is TaskKind.DPO:
        shown = {"prompt": row["prompt"], "chosen": row["chosen"]}
    elif kind is TaskKind.GRPO:
        shown = {"prompt": row["prompt"]}
    else:
        shown = {"caption": row["caption"]}
    return RowRequest(shown, tuple(shown), TASK_TEXT[kind], temperature, variant, seed)


def _assemble(kind: TaskKind, schema: DatasetSchema, row: dict[str, Any], answer: dict[str, str]) -> dict[str, Any]:
    if kind is TaskKind.CHAT:
        turns = row["conversations"]
        return {
            "conversations": [
                m if m["role"] == "system" else {"role": m["role"], "content": answer[_chat_key(i, m["role"])]}
                for i, m in enumerate(turns)
            ]
        }
    new = {f: answer.get(f, row[f]) for f in schema.fields if f != "rejected"}
    for column in schema.extra_columns:
        new[column] = row[column]
    return new


def synthesise_text(
    kind: TaskKind,
    schema: DatasetSchema,
    sources: Sequence[dict[str, Any]],
    generator: Generator,
    config: SynthesisConfig,
    weak_generator: Generator | None = None,
    on_progress: StageProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Synthetic rows for a text kind; failed rows are left out.

    Progress stages: "synthesise" (and, for dpo, "synthesise_rejected").
    """
    if kind is TaskKind.IMAGE:
        raise ValueError("image rows are synthesised by synthesise_images")
    if kind is TaskKind.DPO and weak_generator is None:
        raise ValueError("dpo synthesis needs a weak generator for the rejected responses")
    requests = [
        _text_request(kind, schema, row, config.text_temperature, v, config.seed)
        for row, v in zip(sources, _variants(sources), strict=True)
    ]
    answers = generator.generate(requests, _stage(on_progress, "synthesise"))
    rows = [
        (_assemble(kind, schema, src, ans), i)
        for i, (src, ans) in enumerate(zip(sources, answers, strict=True))
        if ans is not None
    ]
    if kind is not TaskKind.DPO:
        return [row for row, _ in rows]

    assert weak_generator is not None
    weak_requests = [
        RowRequest(
            {"prompt": row["prompt"]},
            ("response",),
            DPO_REJECTED_TASK,
            config.text_temperature,
            i,
            config.seed,
        )
        for row, i in rows
    ]
    rejected = weak_generator.generate(weak_requests, _stage(on_progress, "synthesise_rejected"))
    out = []
    for (row, _), answer in zip(rows, rejected, strict=True):
        # A rejected answer equal to the chosen one carries no preference: drop the pair.
        if answer is not None and answer["response"].strip() != row["chosen"].strip():
            out.append({**row, "rejected": answer["response"]})
    return out


def synthesise_images(
    sources: Sequence[dict[str, Any]],
    images: dict[str, bytes],
    text_generator: Generator,
    image_generator: ImageGenerator,
    config: SynthesisConfig,
    on_progress: StageProgressFn | None = None,
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """New (image, caption) pairs; returns the rows and their encoded images by name.

    Progress stages: "synthesise" (prompts), then "synthesise_images".
    """
    schema = DatasetSchema(TaskKind.IMAGE, ("image", "caption"))
    requests = [
        _text_request(TaskKind.IMAGE, schema, row, config.image_prompt_temperature, v, config.seed)
        for row, v in zip(sources, _variants(sources), strict=True)
    ]
    captions = text_generator.generate(requests, _stage(on_progress, "synthesise"))
    sizing = ImageSizing(max_side=config.image_max_side)
    rows: list[dict[str, Any]] = []
    new_images: dict[str, bytes] = {}
    for index, (source, answer) in enumerate(zip(sources, captions, strict=True)):
        if answer is not None:
            with Image.open(io.BytesIO(images[source["image"]])) as original:
                width, height = snap_size(*original.size, sizing)
            picture = image_generator.generate_image(answer["caption"], width, height, seed=config.seed + index)
            picture = cover_crop(picture.convert("RGB"), width, height)
            data = png_bytes(picture)
            name = image_name(data)
            new_images[name] = data
            rows.append({"image": name, "caption": answer["caption"]})
        if on_progress:
            on_progress("synthesise_images", index + 1, len(sources))
    return rows, new_images
