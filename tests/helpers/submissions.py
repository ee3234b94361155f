"""Builders of real submissions for tests: trained, untouched and hostile uploads, images, and a
fault-injecting group evaluation.

The untrained and hostile builders live in benchmarks/submissions.py (the reliability benchmarks
use them too) and are re-exported here, so a test needs one module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.submissions import (  # noqa: F401 - re-exported for the tests
    DEFAULT_TARGETS,
    _lora_model,
    save_full_copy,
    save_random_lora,
    save_untouched_lora,
    write_adapter_config,
    write_disguised_pickle,
    write_nan_lora,
    write_pickled_bin,
    write_symlink_submission,
)


def _causal_lm_batches(tokenizer, examples, device="cpu"):
    import torch

    from services.eval_worker.text_data import IGNORE_INDEX

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def train_text_lora(
    base_dir: str | Path,
    examples: list,
    out_dir: str | Path,
    steps: int = 30,
    lr: float = 1e-2,
    r: int = 4,
    seed: int = 0,
) -> Path:
    """Supervised LoRA fine-tune on tokenised examples (labels already masked)."""
    import torch

    from services.eval_worker.model_loading import load_tokenizer

    tokenizer = load_tokenizer(str(base_dir))
    model = _lora_model(base_dir, r, seed=seed)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids, labels, mask = _causal_lm_batches(tokenizer, examples)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def train_dpo_lora(
    base_dir: str | Path,
    rows: list[dict],
    out_dir: str | Path,
    steps: int = 30,
    lr: float = 1e-2,
    beta: float = 0.1,
    r: int = 4,
    max_len: int = 256,
) -> Path:
    """LoRA trained with the DPO objective itself (reference = the adapter disabled)."""
    import torch
    import torch.nn.functional as F

    from services.eval_worker.model_loading import load_tokenizer
    from services.eval_worker.text_data import IGNORE_INDEX, preference_examples

    tokenizer = load_tokenizer(str(base_dir))
    pairs = [preference_examples(tokenizer, row, max_len) for row in rows]
    examples = [e for pair in pairs for e in pair]
    ids, labels, mask = _causal_lm_batches(tokenizer, examples)
    model = _lora_model(base_dir, r)

    def seq_logps(m):
        logits = m(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(tgt.shape)
        return -nll.sum(dim=1)

    with torch.no_grad(), model.disable_adapter():
        ref = seq_logps(model)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        logp = seq_logps(model)
        margin = (logp[0::2] - ref[0::2]) - (logp[1::2] - ref[1::2])
        loss = -F.logsigmoid(beta * margin).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


def write_style_images(out_dir: str | Path, n: int = 2, size: int = 64, seed: int = 0) -> list[dict]:
    """n PNGs in one 'style' (smooth colour gradients with stripes) and rows {image, prompt}."""
    import numpy as np
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        r = 0.5 + 0.5 * np.sin(6 * xx + phase)
        g = 0.5 + 0.5 * np.cos(4 * yy + phase)
        b = ((xx * 8 + yy * 8 + i).astype(int) % 2).astype(float)
        img = (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)
        path = out / f"style_{i}.png"
        Image.fromarray(img).save(path)
        rows.append({"image": str(path), "prompt": f"striped gradient {i}"})
    return rows


def _unet_lora(pipe, r: int, init: Any = True):
    from peft import LoraConfig

    # Convolutions included: the tiny UNet's capacity is mostly in its ResNet blocks.
    cfg = LoraConfig(
        r=r,
        lora_alpha=r,
        init_lora_weights=init,
        target_modules=[
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "proj_in",
            "proj_out",
            "conv1",
            "conv2",
            "conv_in",
            "conv_out",
        ],
    )
    pipe.unet.add_adapter(cfg)
    return pipe


def _save_unet_lora(pipe, out_dir: str | Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(str(out_dir), unet_lora_layers=layers, safe_serialization=True)
    return Path(out_dir)


def save_untouched_image_lora(base_dir: str | Path, out_dir: str | Path, r: int = 4) -> Path:
    """A UNet LoRA from peft's default init (B = 0): identical to the base pipeline."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir), safety_checker=None, requires_safety_checker=False)
    return _save_unet_lora(_unet_lora(pipe, r), out_dir)


def train_image_lora(
    base_dir: str | Path,
    rows: list[dict],
    out_dir: str | Path,
    steps: int = 100,
    lr: float = 1e-2,
    r: int = 8,
    seed: int = 0,
) -> Path:
    """UNet LoRA trained with the usual epsilon-prediction loss on the rows' images and prompts."""
    import torch
    import torch.nn.functional as F
    from diffusers import StableDiffusionPipeline

    from services.eval_worker.image_eval import load_image

    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir), safety_checker=None, requires_safety_checker=False)
    _unet_lora(pipe, r)
    images = torch.stack([load_image(row["image"], None, 8) for row in rows]) * 2 - 1
    tok = pipe.tokenizer
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = tok(
            [row["prompt"] for row in rows] + [""],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        embeds = pipe.text_encoder(ids)[0]
    cond, uncond = embeds[:-1], embeds[-1:].expand(len(rows), -1, -1)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = pipe.scheduler
    pipe.unet.train()
    for step in range(steps):
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(rows),))
        noisy = sched.add_noise(latents, noise, t)
        enc = cond if step % 2 == 0 else uncond  # learn the style with and without the prompt
        loss = F.mse_loss(pipe.unet(noisy, t, encoder_hidden_states=enc).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _save_unet_lora(pipe, out_dir)


def fit_tiny_vae(pipeline_dir: str | Path, rows: list[dict], steps: int = 100, lr: float = 2e-3) -> Path:
    """Train a randomly initialised tiny pipeline's VAE as an autoencoder on the rows' images.

    A random VAE decodes every latent to about the same image, which would hide any difference
    between UNets; after this the decoder's output follows the latents. Saved in place.
    """
    import torch
    import torch.nn.functional as F
    from diffusers import StableDiffusionPipeline

    from services.eval_worker.image_eval import load_image

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(pipeline_dir), safety_checker=None, requires_safety_checker=False
    )
    images = torch.stack([load_image(row["image"], None, 4) for row in rows]) * 2 - 1
    vae = pipe.vae
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    for _ in range(steps):
        rec = vae.decode(vae.encode(images).latent_dist.mean).sample
        loss = F.mse_loss(rec, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    pipe.save_pretrained(str(pipeline_dir), safe_serialization=True)
    return Path(pipeline_dir)


# ---------------------------------------------------------------------------------------
# Fault injection for the isolation tests
# ---------------------------------------------------------------------------------------


def fault_injecting_group(job, members, baseline=False):
    """The real group evaluation, except that a member whose hotkey starts with
    'crash' kills the process (SIGSEGV), 'hang' never returns and 'oom' allocates 16 GiB.
    Runs in the evaluation child like `orchestration.evaluate_group`."""
    import signal
    import time

    for member in members:
        if member.hotkey.startswith("crash"):
            os.kill(os.getpid(), signal.SIGSEGV)
        if member.hotkey.startswith("hang"):
            time.sleep(3600)
        if member.hotkey.startswith("oom"):
            hog = bytearray(16 * 1024**3)
            hog[-1] = 1
    from services.eval_worker.orchestration import evaluate_group

    return evaluate_group(job, members, baseline)
