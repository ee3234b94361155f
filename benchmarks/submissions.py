"""Builders of real submissions for benchmarks and tests: random LoRA adapters and hostile uploads.

Everything here writes real files (safetensors adapters, pickles, symlinks, ...) that go through
the same validation and evaluation as miner uploads. Not installed (benchmarks/ runs from the
checkout); tests/helpers/submissions.py adds the trained and image builders.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_TARGETS = ("q_proj", "v_proj", "lm_head")  # the head matters most on a random tiny model


def _lora_model(
    base_dir: str | Path, r: int, init: Any = True, targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0
):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0, init_lora_weights=init)
    return get_peft_model(model, cfg)


def save_untouched_lora(base_dir: str | Path, out_dir: str | Path, r: int = 4) -> Path:
    """A LoRA straight from peft's default init (B = 0): it equals the base model exactly."""
    model = _lora_model(base_dir, r)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def save_random_lora(base_dir: str | Path, out_dir: str | Path, r: int = 4, seed: int = 0, scale: float = 1.0) -> Path:
    """A LoRA with random A and B (a different, untrained model)."""
    import torch

    model = _lora_model(base_dir, r, init=False, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(scale)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


# ---------------------------------------------------------------------------------------
# Hostile uploads
# ---------------------------------------------------------------------------------------


class _Boom:
    """Unpickling this would run os.system; the file must never be unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/gm_eval_pwned",))


def write_pickled_bin(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """A LoRA upload whose weights come as a pickled adapter_model.bin (no safetensors)."""
    out = Path(out_dir)
    shutil.copytree(adapter_dir, out)
    (out / "adapter_model.safetensors").unlink()
    with (out / "adapter_model.bin").open("wb") as f:
        pickle.dump(_Boom(), f, protocol=4)
    return out


def write_disguised_pickle(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """A pickle renamed to .safetensors: caught by its magic bytes."""
    out = Path(out_dir)
    shutil.copytree(adapter_dir, out)
    with (out / "adapter_model.safetensors").open("wb") as f:
        pickle.dump(_Boom(), f, protocol=4)
    return out


def write_nan_lora(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """An adapter with one NaN weight."""
    from safetensors.torch import load_file, save_file

    out = Path(out_dir)
    shutil.copytree(adapter_dir, out)
    path = out / "adapter_model.safetensors"
    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(path))
    return out


def write_symlink_submission(adapter_dir: str | Path, out_dir: str | Path, target: str = "/etc/passwd") -> Path:
    out = Path(out_dir)
    shutil.copytree(adapter_dir, out)
    os.symlink(target, out / "README.md.link")
    return out


def save_full_copy(model_dir: str | Path, out_dir: str | Path) -> Path:
    """The base model submitted as-is as a full model (weights and config only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.suffix in (".safetensors", ".json") and not f.name.startswith("tokenizer"):
            shutil.copy(f, out / f.name)
    return out


def write_adapter_config(out_dir: str | Path, **changes: Any) -> None:
    path = Path(out_dir) / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
