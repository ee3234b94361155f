"""Settings of eval_worker (environment variables)."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from gradients.limits import MAX_SUBMISSION_BYTES, GiB
from gradients.runtime.config import non_negative, one_of, positive, setting


@functools.cache
def cuda_device_count() -> int:
    """CUDA devices the driver shows (honouring CUDA_VISIBLE_DEVICES), asked without torch:
    importing torch in the service process would cost it ~200 MiB only to name its device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except OSError:  # no driver
        return 0


@dataclass(frozen=True)
class EvalWorkerSettings:
    worker_id: str = setting("GRADIENTS_EVAL_WORKER_ID", "", "name of this worker in results (empty = hostname:pid)")
    device: str = setting(
        "GRADIENTS_EVAL_DEVICE", "auto", "auto (cuda when present), cpu or cuda", check=one_of("auto", "cpu", "cuda")
    )
    isolate: bool = setting("GRADIENTS_EVAL_ISOLATE", True, "run loading and forward passes in child processes")
    plan: str = setting(
        "GRADIENTS_EVAL_PLAN",
        "auto",
        "how a group of LoRA adapters is evaluated: auto (merged on CPU, mixed on CUDA), mixed (one batch, "
        "adapters chosen per row) or merged (each adapter merged into the base in turn)",
        check=one_of("auto", "mixed", "merged"),
    )
    warm_bases: int = setting(
        "GRADIENTS_EVAL_WARM_BASES",
        1,
        "base models kept loaded across jobs (CPU): the next job of a base does not load it again; 0 turns it off",
        check=non_negative,
    )
    child_memory_gb: float = setting(
        "GRADIENTS_EVAL_CHILD_MEMORY_GB", 32.0, "address-space cap of an evaluation child (CPU)", check=positive
    )
    child_timeout_s: float = setting(
        "GRADIENTS_EVAL_CHILD_TIMEOUT_S", 14400.0, "wall-time cap of an evaluation child", check=positive
    )
    max_lora_rank: int = setting("GRADIENTS_EVAL_MAX_LORA_RANK", 256, "largest LoRA rank accepted", check=positive)
    max_upload_gb: float = setting(
        "GRADIENTS_EVAL_MAX_UPLOAD_GB",
        MAX_SUBMISSION_BYTES / GiB,
        "largest unpacked submission accepted (the gateway's GRADIENTS_SELECTOR_MAX_UPLOAD_BYTES must not exceed it)",
        check=positive,
    )
    image_seeds_per_level: int = setting(
        "GRADIENTS_EVAL_IMAGE_SEEDS_PER_LEVEL", 10, "noise seeds per denoise strength (paper: 10)", check=positive
    )
    image_steps: int = setting(
        "GRADIENTS_EVAL_IMAGE_STEPS", 20, "denoising steps for image reconstruction", check=positive
    )
    grpo_generations: int = setting(
        "GRADIENTS_EVAL_GRPO_GENERATIONS", 4, "completions per test prompt (GRPO)", check=positive
    )
    grpo_max_new_tokens: int = setting(
        "GRADIENTS_EVAL_GRPO_MAX_NEW_TOKENS", 64, "tokens per GRPO completion", check=positive
    )
    keep_work_dirs: bool = setting(
        "GRADIENTS_EVAL_KEEP_WORK_DIRS", False, "keep unpacked submissions after a job (debugging)"
    )

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if cuda_device_count() > 0 else "cpu"
