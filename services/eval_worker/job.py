"""One evaluation job: a task's base model, its data splits and N submissions on disk.

`evaluate_job(job, submissions)` is the single entry point the work-queue handler calls.
It validates every submission (no model code runs for that), plans groups (all mixed-batch
LoRA adapters of a text task share one child process and one copy of the base model; a full
model or an adapter that cannot join a mixed batch gets its own child), runs each group in an
isolated child process, retries the members of a crashed group one by one, and turns the raw
per-example numbers into `SubmissionEval`s. Lower `loss_weighted` is better for every type.

The base model itself is evaluated as one more member of the first group that loads it (adapter
disabled, no extra load) and comes back as `JobOutcome.baseline`; a job without any such group
(no valid submission, or text full models only) evaluates the base in a child of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gradients.limits import MAX_SUBMISSION_BYTES

TASK_TYPES = ("INSTRUCT_TEXT", "CHAT", "DPO", "GRPO", "IMAGE")
TEXT_TASK_TYPES = ("INSTRUCT_TEXT", "CHAT", "DPO", "GRPO")

GiB = 1024**3
MiB = 1024**2

# The base model's own result: no miner hotkey (run_job refuses submissions without one, so
# the key never collides with a member in a group's results).
BASELINE_HOTKEY = ""


@dataclass(frozen=True)
class EvalLimits:
    """Caps on what a submission may be and on what evaluating it may cost."""

    max_lora_rank: int = 256
    max_adapter_bytes: int = MAX_SUBMISSION_BYTES  # the gateway's cap too (gradients.limits)
    # A full model may be at most this many times the base's weight bytes (2x: fp32 upload of a bf16 base).
    max_full_model_ratio: float = 2.05
    max_files: int = 256
    max_seq_len: int = 1024
    # Tokens (padded) per forward batch; bounds the B*T*V logits tensor on CPU.
    max_batch_tokens: int = 4096
    max_batch_size: int = 64
    max_adapters_per_group: int = 16
    # How a group of adapters is evaluated: "mixed" (per-row adapters in shared batches), "merged"
    # (each LoRA merged into the base in turn), or "auto" (by device: text_eval.choose_plan).
    eval_plan: str = "auto"
    # Child processes: address-space cap (CPU only; CUDA maps huge virtual ranges) and wall time.
    child_memory_bytes: int | None = 32 * GiB
    child_timeout_s: float = 4 * 3600.0
    torch_threads: int | None = None
    # False runs groups in this process (tests of the numerics, debugging); never in production.
    isolate: bool = True
    # Bases kept loaded across jobs by warm holders (CPU; services/eval_worker/warm.py); 0: none.
    warm_bases: int = 1
    # Whether to recompute `directory_sha256` of each upload and refuse a mismatch.
    verify_sha256: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_lora_rank",
            "max_adapter_bytes",
            "max_files",
            "max_seq_len",
            "max_batch_tokens",
            "max_batch_size",
            "max_adapters_per_group",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"EvalLimits.{name} must be positive, got {getattr(self, name)}")
        if self.warm_bases < 0:
            raise ValueError(f"EvalLimits.warm_bases must be >= 0, got {self.warm_bases}")
        if self.child_timeout_s <= 0:
            raise ValueError(f"EvalLimits.child_timeout_s must be positive, got {self.child_timeout_s}")
        if self.eval_plan not in ("auto", "mixed", "merged"):
            raise ValueError(f"EvalLimits.eval_plan must be auto, mixed or merged, got {self.eval_plan!r}")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of the process that runs one reward function over a batch of completions."""

    memory_bytes: int = 1 * GiB
    cpu_seconds: int = 20
    wall_seconds: float = 30.0
    max_output_bytes: int = 16 * MiB


@dataclass(frozen=True)
class RewardSpec:
    """One GRPO reward function (mirrors gradients.v1.RewardFunction).

    name: a built-in (format, length, exact_match, numeric_match, keyword) or "code".
    params: string parameters of the built-in; for "code", params["function"] may name the
    function to call (default: the only function the code defines).
    """

    name: str
    weight: float = 1.0
    code: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("RewardSpec.name must not be empty")
        if not math.isfinite(self.weight):
            raise ValueError(f"RewardSpec.weight must be finite, got {self.weight}")
        if self.name == "code" and not self.code.strip():
            raise ValueError("RewardSpec.code is required when name == 'code'")


@dataclass(frozen=True)
class GrpoOptions:
    """How GRPO completions are sampled and how far they may drift from the base."""

    num_generations: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    kl_beta: float = 0.04
    seed: int = 0
    sandbox: SandboxLimits = SandboxLimits()

    def __post_init__(self) -> None:
        if self.num_generations <= 0 or self.max_new_tokens <= 0:
            raise ValueError("GrpoOptions.num_generations and max_new_tokens must be positive")
        if self.temperature <= 0:
            raise ValueError(f"GrpoOptions.temperature must be positive, got {self.temperature}")


DEFAULT_STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ImageOptions:
    """Reconstruction protocol of §4.4.2 (eqs 16, 17)."""

    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    seeds_per_level: int = 10  # the paper's value
    num_inference_steps: int = 20
    guidance_scale: float = 1.0  # 1.0 = one UNet call per step (no classifier-free guidance)
    text_weight: float = 0.25  # delta: L = delta*L_text + (1-delta)*L_no-text
    resolution: int | None = None  # resize square; None keeps each image's size (cropped to /8)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.strengths or any(not 0.0 < s <= 1.0 for s in self.strengths):
            raise ValueError(f"ImageOptions.strengths must lie in (0, 1], got {self.strengths}")
        if self.seeds_per_level <= 0 or self.num_inference_steps <= 0:
            raise ValueError("ImageOptions.seeds_per_level and num_inference_steps must be positive")
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"ImageOptions.text_weight must lie in [0, 1], got {self.text_weight}")


@dataclass(frozen=True)
class EvalJob:
    """Everything needed to score a task's submissions; rows are the standardised columns.

    INSTRUCT_TEXT rows: {instruction, input, output, system?}; CHAT: {conversations: [{role, content}]};
    DPO: {prompt, chosen, rejected, system?}; GRPO: {prompt, system?, ...extra columns passed to
    the reward functions}; IMAGE: {image: path, prompt (or caption)}.
    """

    task_id: str
    task_type: str
    base_model_dir: str
    test_rows: list[dict[str, Any]]
    synth_rows: list[dict[str, Any]] = field(default_factory=list)
    reward_functions: list[RewardSpec] = field(default_factory=list)
    device: str = "cpu"
    limits: EvalLimits = EvalLimits()
    test_weight: float = 0.7  # omega, text tasks (L_weighted = omega*L_test + (1-omega)*L_synth)
    dpo_beta: float = 0.1
    grpo: GrpoOptions = GrpoOptions()
    image: ImageOptions = ImageOptions()
    image_root: str = ""  # IMAGE: folder that relative row["image"] paths are under

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"EvalJob.task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
        if not self.test_rows:
            raise ValueError("EvalJob.test_rows must not be empty")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"EvalJob.device must be 'cpu' or 'cuda', got {self.device!r}")
        if not 0.0 <= self.test_weight <= 1.0:
            raise ValueError(f"EvalJob.test_weight must lie in [0, 1], got {self.test_weight}")
        if self.task_type == "GRPO" and not self.reward_functions:
            raise ValueError("EvalJob.reward_functions must not be empty for a GRPO task")


@dataclass(frozen=True)
class Submission:
    hotkey: str
    path: str  # the upload's folder on disk
    sha256: str = ""


@dataclass
class SubmissionEval:
    """The outcome for one submission. Losses: lower is better for every task type.

    Text: per-example = mean token cross-entropy over the example's completion tokens; a set's
    loss = mean over its examples (eqs 5, 6). DPO: per-example DPO loss. GRPO: per-prompt
    -(weighted reward - beta*KL), with the (higher-is-better) scores kept in score_*. IMAGE:
    per-image delta*L_text + (1-delta)*L_no-text (mean squared error in [0, 1] pixel space).
    """

    hotkey: str
    ok: bool
    reason: str = ""
    loss_test: float | None = None
    loss_synth: float | None = None
    loss_weighted: float | None = None
    per_example_test: list[float] = field(default_factory=list)
    per_example_synth: list[float] = field(default_factory=list)
    score_test: float | None = None  # GRPO only: higher is better
    score_synth: float | None = None
    score_weighted: float | None = None
    kind: str = ""  # "adapter" | "full" once validated
    details: dict[str, float] = field(default_factory=dict)  # e.g. image loss_text / loss_no_text
    warnings: list[str] = field(default_factory=list)


def failed(hotkey: str, reason: str, kind: str = "") -> SubmissionEval:
    return SubmissionEval(hotkey=hotkey, ok=False, reason=reason, kind=kind)


@dataclass
class JobOutcome:
    """results: one per submission, in input order. baseline: the base model evaluated exactly
    like a submission (hotkey "", kind "base"; ok=False with a reason if it could not be)."""

    results: list[SubmissionEval]
    baseline: SubmissionEval


def evaluate_job(job: EvalJob, submissions: list[Submission]) -> JobOutcome:
    """Score every submission of one task, and the base model alongside."""
    from services.eval_worker.orchestration import run_job

    return run_job(job, submissions)
