"""Settings of dataset_prep (GRADIENTS_DATASET_*).

Generators (§3.3, G(x, τ)): `local` samples a local `transformers` causal LM (the embedded
default; empty path = the task's own base model when it is a local model folder), `openai`
calls an OpenAI-compatible chat-completions endpoint (vLLM, TGI, a hosted API). DPO rejected
answers come from a weaker model (default: the same one). Image tasks draw new images with a
diffusers pipeline (empty path = the task's base model when it is a diffusers folder); their
new prompts come from a text model configured here (GRADIENTS_DATASET_PROMPT_MODEL_PATH, else
the text model), never from the task's base, which is a diffusers pipeline. The local backend
writes many rows per model call (GRADIENTS_DATASET_LOCAL_BATCH_ROWS / _BATCH_TOKENS).

Replicas: any number of dataset_prep processes share the `jobs.prepare` work queue; each runs
GRADIENTS_DATASET_CONCURRENCY preparations at once.

With GRADIENTS_DATASET_SYNTHETIC=false no synthetic rows are generated: D_synth is empty
(its artifact holds zero rows), no generator is loaded, and evaluation falls back to
L_test alone for the synthetic term.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gradients.runtime.config import ConfigError, non_negative, one_of, positive, setting, url_scheme
from services.dataset_prep.images import ImageSizing
from services.dataset_prep.logic import SplitConfig
from services.dataset_prep.pipeline import PrepConfig
from services.dataset_prep.schema import RejectionLimits
from services.dataset_prep.synthesis import SynthesisConfig, task_seed


def _device_check(value: str) -> str | None:
    if value in ("auto", "cpu", "mps") or value == "cuda" or value.startswith("cuda:"):
        return None
    return "must be auto, cpu, cuda, cuda:<n> or mps"


def _fraction(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def _multiple_of_64(value: int) -> str | None:
    return None if value >= 64 and value % 64 == 0 else "must be a positive multiple of 64"


def split_roots(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _roots_check(value: str) -> str | None:
    for root in split_roots(value):
        if not os.path.isabs(root):
            return f"{root!r} is not an absolute path"
        if os.path.realpath(root) == os.path.abspath(os.sep):
            return "must not include the file-system root"
    return None


def is_transformers_folder(path: str | Path) -> bool:
    """A local folder holding a transformers model (not a diffusers pipeline)."""
    folder = Path(path)
    return (folder / "config.json").is_file() and not (folder / "model_index.json").exists()


def is_diffusers_folder(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


@dataclass(frozen=True)
class DatasetPrepSettings:
    # ---- which generator writes D_synth
    generator: str = setting(
        "GRADIENTS_DATASET_GENERATOR",
        "local",
        "text generator backend: local (a transformers causal LM) or openai (OpenAI-compatible HTTP endpoint)",
        check=one_of("local", "openai"),
    )
    text_model_path: str = setting(
        "GRADIENTS_DATASET_TEXT_MODEL_PATH",
        "",
        "local: folder of the causal LM that writes synthetic rows (empty = the task's base model when it is a local model folder)",
    )
    weak_model_path: str = setting(
        "GRADIENTS_DATASET_WEAK_MODEL_PATH",
        "",
        "local: weaker model for DPO rejected answers (empty = the text model)",
    )
    prompt_model_path: str = setting(
        "GRADIENTS_DATASET_PROMPT_MODEL_PATH",
        "",
        "local: causal LM that writes image tasks' new prompts (an image task's base is a diffusers pipeline; "
        "empty = GRADIENTS_DATASET_TEXT_MODEL_PATH)",
    )
    openai_base_url: str = setting(
        "GRADIENTS_DATASET_OPENAI_BASE_URL",
        "",
        "openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1",
        check=url_scheme("http", "https"),
    )
    openai_api_key: str = setting("GRADIENTS_DATASET_OPENAI_API_KEY", "", "openai: bearer token (empty = none sent)")
    openai_model: str = setting("GRADIENTS_DATASET_OPENAI_MODEL", "", "openai: model name of the strong generator")
    openai_weak_model: str = setting(
        "GRADIENTS_DATASET_OPENAI_WEAK_MODEL",
        "",
        "openai: model for DPO rejected answers (empty = the strong model)",
    )
    openai_concurrency: int = setting(
        "GRADIENTS_DATASET_OPENAI_CONCURRENCY",
        8,
        "openai: requests in flight at once",
        check=positive,
    )
    openai_retries: int = setting(
        "GRADIENTS_DATASET_OPENAI_RETRIES",
        2,
        "openai: retries of a failed or malformed row before it is dropped",
        check=non_negative,
    )
    openai_timeout_s: float = setting(
        "GRADIENTS_DATASET_OPENAI_TIMEOUT_S",
        60.0,
        "openai: seconds per request",
        check=positive,
    )
    openai_json_mode: bool = setting(
        "GRADIENTS_DATASET_OPENAI_JSON_MODE",
        False,
        "openai: also send response_format=json_object",
    )
    max_consecutive_failures: int = setting(
        "GRADIENTS_DATASET_MAX_CONSECUTIVE_FAILURES",
        10,
        "failed generations in a row that abort the task's data preparation",
        check=positive,
    )
    local_max_new_tokens: int = setting(
        "GRADIENTS_DATASET_LOCAL_MAX_NEW_TOKENS",
        256,
        "local: most tokens of a JSON answer (each may take 2x its source row's tokens + 32)",
        check=positive,
    )
    local_attempts: int = setting(
        "GRADIENTS_DATASET_LOCAL_ATTEMPTS",
        2,
        "local: JSON attempts per row before the field-by-field fallback",
        check=positive,
    )
    local_fallback_max_new_tokens: int = setting(
        "GRADIENTS_DATASET_LOCAL_FALLBACK_MAX_NEW_TOKENS",
        48,
        "local: tokens per field in the field-by-field fallback",
        check=positive,
    )
    local_batch_rows: int = setting(
        "GRADIENTS_DATASET_LOCAL_BATCH_ROWS",
        64,
        "local: rows generated per model call (1 = one row per call)",
        check=positive,
    )
    local_batch_tokens: int = setting(
        "GRADIENTS_DATASET_LOCAL_BATCH_TOKENS",
        16384,
        "local: token budget of one model call, rows x (longest prompt + new tokens)",
        check=positive,
    )
    device: str = setting(
        "GRADIENTS_DATASET_DEVICE",
        "auto",
        "device of local models: auto (cuda when present), cpu, cuda, cuda:<n>, mps",
        check=_device_check,
    )
    dtype: str = setting(
        "GRADIENTS_DATASET_DTYPE",
        "auto",
        "dtype of local models: auto (bfloat16 on cuda and, for text models, on a CPU with native bfloat16;"
        " else float32), float32, bfloat16, float16",
        check=one_of("auto", "float32", "bfloat16", "float16"),
    )
    image_pipeline_path: str = setting(
        "GRADIENTS_DATASET_IMAGE_PIPELINE_PATH",
        "",
        "diffusers folder that draws synthetic images (empty = the task's base model when it is a diffusers folder)",
    )
    image_steps: int = setting(
        "GRADIENTS_DATASET_IMAGE_STEPS", 30, "denoising steps per synthetic image", check=positive
    )
    image_guidance: float = setting(
        "GRADIENTS_DATASET_IMAGE_GUIDANCE",
        7.5,
        "classifier-free guidance scale of synthetic images",
        check=non_negative,
    )
    image_max_side: int = setting(
        "GRADIENTS_DATASET_IMAGE_MAX_SIDE",
        1024,
        "longest image side kept (source and synthetic), a multiple of 64",
        check=_multiple_of_64,
    )
    # ---- splits and limits (§3.3)
    split_seed: int = setting(
        "GRADIENTS_DATASET_SPLIT_SEED", 42, "seed of the train/test split and the synthetic sample"
    )
    generation_seed: int = setting(
        "GRADIENTS_DATASET_GENERATION_SEED", 42, "seed of synthetic generation (local models, images, openai 'seed')"
    )
    min_rows: int = setting(
        "GRADIENTS_DATASET_MIN_ROWS", 10, "usable rows a dataset needs, else the task FAILS", check=positive
    )
    max_empty_fraction: float = setting(
        "GRADIENTS_DATASET_MAX_EMPTY_FRACTION",
        0.8,
        "share of empty rows above which a dataset is rejected",
        check=_fraction,
    )
    text_temperature: float = setting(
        "GRADIENTS_DATASET_TEXT_TEMPERATURE", 0.6, "τ of synthetic text rows", check=non_negative
    )
    image_temperature: float = setting(
        "GRADIENTS_DATASET_IMAGE_TEMPERATURE",
        0.4,
        "τ of synthetic image prompts",
        check=non_negative,
    )
    synthetic: bool = setting(
        "GRADIENTS_DATASET_SYNTHETIC",
        True,
        "generate D_synth (false: D_synth is empty and no generator is loaded)",
    )
    max_synth_rows: int = setting(
        "GRADIENTS_DATASET_MAX_SYNTH_ROWS",
        300,
        "cap κ on |D_synth| (paper: 300; small values make demos fast)",
        check=non_negative,
    )
    synth_source: str = setting(
        "GRADIENTS_DATASET_SYNTH_SOURCE",
        "dataset",
        "rows G rewrites: dataset (the paper's sample of D) or test (the reference validator)",
        check=one_of("dataset", "test"),
    )
    # ---- where customers' datasets may come from (gradients.sources)
    dataset_local_roots: str = setting(
        "GRADIENTS_DATASET_LOCAL_ROOTS",
        "",
        "comma-separated absolute folders under which customers' tasks may name local dataset paths "
        "(empty = none; symlinks are resolved before the check)",
        check=_roots_check,
    )
    allow_http: bool = setting(
        "GRADIENTS_DATASET_ALLOW_HTTP",
        False,
        "customers may name http(s) dataset URLs (public addresses only, every redirect checked)",
    )
    # ---- service
    concurrency: int = setting(
        "GRADIENTS_DATASET_CONCURRENCY",
        1,
        "preparations this replica runs at once (replicas share the jobs.prepare work queue)",
        check=positive,
    )
    progress_interval_s: float = setting(
        "GRADIENTS_DATASET_PROGRESS_INTERVAL_S",
        0.5,
        "least seconds between progress events of one stage",
        check=non_negative,
    )
    generator_cache: int = setting(
        "GRADIENTS_DATASET_GENERATOR_CACHE",
        2,
        "loaded generator models kept between tasks (0 = load per task)",
        check=non_negative,
    )

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        """Checks that involve several settings or the file system."""
        out = []
        if self.generator == "openai":
            if not self.openai_base_url:
                out.append("GRADIENTS_DATASET_OPENAI_BASE_URL is required when GRADIENTS_DATASET_GENERATOR=openai")
            if not self.openai_model:
                out.append("GRADIENTS_DATASET_OPENAI_MODEL is required when GRADIENTS_DATASET_GENERATOR=openai")
        for env, path in (
            ("GRADIENTS_DATASET_TEXT_MODEL_PATH", self.text_model_path),
            ("GRADIENTS_DATASET_WEAK_MODEL_PATH", self.weak_model_path),
            ("GRADIENTS_DATASET_PROMPT_MODEL_PATH", self.prompt_model_path),
        ):
            if path and not is_transformers_folder(path):
                out.append(f"{env}={path!r}: not a folder holding a transformers model (config.json)")
        if self.image_pipeline_path and not is_diffusers_folder(self.image_pipeline_path):
            out.append(
                f"GRADIENTS_DATASET_IMAGE_PIPELINE_PATH={self.image_pipeline_path!r}: "
                "not a diffusers pipeline folder (model_index.json)"
            )
        return out

    @property
    def local_roots(self) -> list[str]:
        """GRADIENTS_DATASET_LOCAL_ROOTS as a list."""
        return split_roots(self.dataset_local_roots)

    def prep_config(self, task_id: str = "") -> PrepConfig:
        """The pipeline's configuration; with a task id, generation uses that task's seed."""
        return PrepConfig(
            split=SplitConfig(
                seed=self.split_seed,
                synth_cap=self.max_synth_rows if self.synthetic else 0,
                synth_source=self.synth_source,
            ),  # type: ignore[arg-type]
            limits=RejectionLimits(min_rows=self.min_rows, max_empty_fraction=self.max_empty_fraction),
            synthesis=SynthesisConfig(
                text_temperature=self.text_temperature,
                image_prompt_temperature=self.image_temperature,
                image_max_side=self.image_max_side,
                seed=task_seed(self.generation_seed, task_id),
            ),
            image_sizing=ImageSizing(max_side=self.image_max_side),
        )
