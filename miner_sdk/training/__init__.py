"""Reference training for miners: run after accepting a task and downloading its training split.

    from miner_sdk.training import Deadline, train
    deadline = Deadline(at=task_deadline, upload_margin_s=300)
    result = train("lr-sweep", "instruct", base_dir, rows, out_dir, deadline)
    # upload result.adapter_dir (safetensors only)

Names are imported lazily (torch, transformers, trl and diffusers take seconds to import):
`from miner_sdk.training import Deadline` stays cheap, and the task-type modules (sft, dpo,
grpo, image) are imported on first use, so an image-only miner never imports trl.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Deadline": "miner_sdk.training.deadline",
    "DeadlineCallback": "miner_sdk.training.deadline",
    "DeadlineGuard": "miner_sdk.training.deadline",
    "DeadlinePassed": "miner_sdk.training.deadline",
    "HyperParams": "miner_sdk.training.common",
    "TaskType": "miner_sdk.training.common",
    "TrialOutcome": "miner_sdk.training.common",
    "STRATEGIES": "miner_sdk.training.strategies",
    "Strategy": "miner_sdk.training.strategies",
    "TrainResult": "miner_sdk.training.strategies",
    "train": "miner_sdk.training.strategies",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
