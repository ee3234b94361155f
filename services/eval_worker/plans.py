"""How a group of LoRA adapters on one base is evaluated: mixed-adapter batches or merged weights.

- mixed: every sequence runs once per adapter (and once as `__base__`) in shared batches; peft
  routes each row through its own adapter (`adapter_names`). Batches are K+1 times larger, which
  is what a GPU needs to be busy on short rows, but every LoRA layer splits the batch by adapter
  and runs two small matmuls per adapter: pure overhead on a CPU, where one adapter's batches
  already keep the cores busy.
- merged: the base pass first, then each adapter in turn is merged into the base weights in place
  (W += scale * B @ A), the rows are evaluated as a plain model, and the original weights are
  copied back (not subtracted, so the base stays bit-exact for the next adapter and the DPO
  reference: an all-zero LoRA still scores exactly ln 2).

Both give per-example losses equal to one-at-a-time evaluation within 1e-4 (tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from services.eval_worker.logic import PLANS as PLANS  # noqa: F401  (the choice is pure)
from services.eval_worker.logic import choose_plan as choose_plan


def _lora_layers(model: Any, name: str) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and (name in m.lora_A or name in m.lora_embedding_A)]


def can_merge(model: Any, names: list[str]) -> bool:
    """Whether merging each adapter in place is exact and touches only its own layers.

    Vanilla LoRA only (no DoRA or other variant: not a plain weight delta), and no targeted
    weight may be shared with another module (a tied lm_head / embedding would change both).
    """
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[p.data_ptr()] = counts.get(p.data_ptr(), 0) + 1
    for name in names:
        for layer in _lora_layers(model, name):
            if name in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(name):
                return False
            weight = layer.get_base_layer().weight
            if counts.get(weight.data_ptr(), 0) > 1:
                return False
    return True


@contextmanager
def merged_adapter(model: Any, name: str) -> Iterator[None]:
    """Adapter `name` merged into the base weights for the duration; the originals restored after.

    Use with the adapters disabled (`model.disable_adapter()`), so the LoRA layers run their base
    layers only and the delta is not applied twice.
    """
    import torch

    saved: list[tuple[Any, Any]] = []
    try:
        with torch.no_grad():
            for layer in _lora_layers(model, name):
                weight = layer.get_base_layer().weight
                delta = layer.get_delta_weight(name)
                if delta.shape != weight.shape:
                    raise ValueError(f"LoRA delta of shape {list(delta.shape)} does not fit {list(weight.shape)}")
                saved.append((weight, weight.detach().clone()))
                weight.add_(delta.to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)
