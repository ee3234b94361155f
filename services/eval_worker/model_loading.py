"""Loading the base model once and attaching many LoRA adapters to it (runs in the child).

Adapters are not loaded with `PeftModel.from_pretrained`: we build each `LoraConfig` from the
fields validation kept (`init_lora_weights=False`, so no initialiser such as PiSSA/OLoRA can
rewrite the shared base weights) and copy the safetensors weights in with
`set_peft_model_state_dict`. Full models are loaded with the base's config and safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.eval_worker.validation import ValidatedSubmission

if TYPE_CHECKING:
    import torch

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


def resolve_device(requested: str) -> str:
    """CUDA when it was asked for and is present, else CPU."""
    import torch

    return "cuda" if requested == "cuda" and torch.cuda.is_available() else "cpu"


def dtype_for(device: str) -> torch.dtype:
    import torch

    # fp32 on CPU keeps results reproducible across batchings; bf16 on GPUs.
    return torch.bfloat16 if device == "cuda" else torch.float32


def load_tokenizer(base_dir: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, device: str, config_dir: str | None = None) -> Any:
    """A causal LM from safetensors; config_dir (the base) supplies the config for full uploads.

    In a fork of a warm holder (services/eval_worker/warm.py) the base is already loaded: the
    first load of it takes that copy instead of reading the disk again.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from services.eval_worker.warm import take_warm_base

    if config_dir is None and (warm := take_warm_base(path, device)) is not None:
        return warm

    kwargs: dict[str, Any] = {"dtype": dtype_for(device), "use_safetensors": True, "trust_remote_code": False}
    if config_dir is not None:
        kwargs["config"] = AutoConfig.from_pretrained(config_dir, trust_remote_code=False)
    model: Any
    try:  # fused attention (torch SDPA); an architecture without it keeps its default
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


@dataclass
class AttachedAdapters:
    model: Any  # PeftModel, or the bare base when nothing attached
    names: dict[str, str] = field(default_factory=dict)  # hotkey -> adapter name
    failures: dict[str, str] = field(default_factory=dict)  # hotkey -> reason


def attach_lora_adapters(base_model: Any, members: list[ValidatedSubmission], device: str) -> AttachedAdapters:
    """Attach every member's LoRA to one PeftModel; a member that fails to load fails alone."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    result = AttachedAdapters(model=base_model)
    peft_model = None
    for i, member in enumerate(members):
        name = f"sub{i}"
        try:
            cfg = LoraConfig(
                **(member.lora_config or {}),
                task_type="CAUSAL_LM",
                inference_mode=True,
                init_lora_weights=False,
            )
            if peft_model is None:
                peft_model = get_peft_model(base_model, cfg, adapter_name=name)
            else:
                peft_model.add_adapter(name, cfg)
            state = load_file(str(Path(member.path) / "adapter_model.safetensors"), device=device)
            # Copies of base tensors (validated equal to the base) must not touch the shared base.
            state = {k: v for k, v in state.items() if ".base_layer." not in k}
            load: Any = set_peft_model_state_dict(peft_model, state, adapter_name=name)
            missing = [k for k in load.missing_keys if f".{name}." in k and "lora_" in k]
            if missing:
                raise ValueError(f"the adapter config targets modules its weights do not cover, e.g. {missing[0]}")
            result.names[member.hotkey] = name
        except Exception as exc:
            result.failures[member.hotkey] = f"adapter could not be loaded: {exc}"
            if peft_model is not None and name in peft_model.peft_config:
                try:
                    peft_model.delete_adapter(name)
                except Exception:  # the last adapter cannot be deleted; it is never used
                    pass
    if peft_model is not None:
        peft_model.to(device).eval()
        result.model = peft_model
    return result
