"""LoRA on the UNet of a Stable Diffusion pipeline folder (noise-prediction MSE).

Rows are {image, caption}: `image` is a path (relative paths are resolved against
`image_root`) or a PIL image. Images are cover-cropped to a square `resolution` and encoded
once by the frozen VAE; captions are encoded once by the frozen text encoder. A trial is
scored like the evaluator scores: noise-prediction MSE at 9 noise strengths 0.1-0.9 with a
fixed seed, 0.25 x with the caption + 0.75 x without it.

The adapter is saved with the pipeline's own `save_lora_weights` (a single
`pytorch_lora_weights.safetensors`, loadable with `pipe.load_lora_weights(dir)`). lora_alpha
is set to the rank so the file needs no scaling metadata. SDXL pipelines (two text
encoders) are not supported yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from miner_sdk.training.common import (
    HyperParams,
    RowsCache,
    TrialRun,
    check_rows,
    optimizer_loop,
    seed_everything,
    training_device,
    training_dtype,
)
from miner_sdk.training.deadline import Deadline

# AutoTrain's DreamBooth LoRA defaults: lr 1e-4, batch 1, accumulation 4, rank 4, constant
# schedule without warm-up, 500 steps (epochs is only an upper bound here).
AUTOTRAIN_IMAGE = HyperParams(
    learning_rate=1e-4,
    epochs=1000.0,
    max_steps=500,
    batch_size=1,
    grad_accum=4,
    warmup_ratio=0.0,
    scheduler="constant",
    lora_r=4,
    lora_alpha=4,
    lora_dropout=0.0,
)
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
EVAL_STRENGTHS = tuple(round(0.1 * i, 1) for i in range(1, 10))
EVAL_TEXT_WEIGHT = 0.25  # L = 0.25 L_text + 0.75 L_no-text
ADAPTER_NAME = "miner"


@dataclass
class ImageBase:
    pipe: Any
    noise_scheduler: DDPMScheduler
    device: torch.device
    dtype: torch.dtype
    native_resolution: int


@dataclass
class ImageExample:
    latents: torch.Tensor  # [4, h, w], scaled
    text_embeds: torch.Tensor  # [tokens, dim]
    empty_embeds: torch.Tensor  # the empty prompt's embedding (caption dropout)


def cover_square(image: Image.Image, side: int) -> Image.Image:
    """Scale to cover side x side keeping the aspect ratio, then centre-crop."""
    width, height = image.size
    scale = side / min(width, height)
    resized = image.resize((max(side, round(width * scale)), max(side, round(height * scale))), Image.BICUBIC)
    left = (resized.width - side) // 2
    top = (resized.height - side) // 2
    return resized.crop((left, top, left + side, top + side))


def load_image(value: Any, image_root: Path | None) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    path = Path(value)
    if not path.is_absolute() and image_root is not None:
        path = image_root / path
    if not path.exists():
        raise ValueError(f"image row field 'image' points to a missing file: {path}")
    with Image.open(path) as img:
        return img.convert("RGB")


def pixels(image: Image.Image, side: int) -> torch.Tensor:
    array = np.asarray(cover_square(image, side), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def encode_text(base: ImageBase, captions: Sequence[str]) -> torch.Tensor:
    tok = base.pipe.tokenizer
    ids = tok(
        list(captions),
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(base.device)
    return base.pipe.text_encoder(ids)[0]


@torch.no_grad()
def encode_rows(base: ImageBase, rows: Sequence[dict], resolution: int, image_root: Path | None) -> list[ImageExample]:
    vae = base.pipe.vae
    empty = encode_text(base, [""])[0]
    examples = []
    for row in rows:
        pixel = pixels(load_image(row["image"], image_root), resolution).unsqueeze(0)
        latents = vae.encode(pixel.to(base.device, base.dtype)).latent_dist.mean * vae.config.scaling_factor
        text = encode_text(base, [str(row["caption"])])[0]
        examples.append(ImageExample(latents=latents[0], text_embeds=text, empty_embeds=empty))
    return examples


def noise_target(scheduler: DDPMScheduler, latents, noise, timesteps) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def diffusion_loss(base: ImageBase, unet, examples: Sequence[ImageExample], caption_dropout: float) -> torch.Tensor:
    latents = torch.stack([e.latents for e in examples]).float()
    drop = torch.rand(len(examples)) < caption_dropout
    embeds = torch.stack([e.empty_embeds if d else e.text_embeds for e, d in zip(examples, drop, strict=True)])
    noise = torch.randn_like(latents)
    steps = base.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (len(examples),), device=latents.device)
    noisy = base.noise_scheduler.add_noise(latents, noise, timesteps)
    with torch.autocast(base.device.type, dtype=base.dtype, enabled=base.dtype != torch.float32):
        pred = unet(noisy.to(base.dtype), timesteps, encoder_hidden_states=embeds.to(base.dtype)).sample
    return F.mse_loss(pred.float(), noise_target(base.noise_scheduler, latents, noise, timesteps).float())


@torch.no_grad()
def reconstruction_loss(base: ImageBase, examples: Sequence[ImageExample], seed: int = 0) -> float:
    """0.25 x MSE with the caption + 0.75 x MSE without, over 9 fixed noise strengths."""
    unet = base.pipe.unet
    unet.eval()
    generator = torch.Generator().manual_seed(seed)
    steps = base.noise_scheduler.config.num_train_timesteps
    total = 0.0
    for example in examples:
        latents = example.latents.unsqueeze(0).float()
        for strength in EVAL_STRENGTHS:
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            t = torch.tensor([min(steps - 1, int(strength * steps))], device=latents.device)
            noisy = base.noise_scheduler.add_noise(latents, noise, t)
            target = noise_target(base.noise_scheduler, latents, noise, t).float()
            for weight, embeds in (
                (EVAL_TEXT_WEIGHT, example.text_embeds),
                (1 - EVAL_TEXT_WEIGHT, example.empty_embeds),
            ):
                with torch.autocast(base.device.type, dtype=base.dtype, enabled=base.dtype != torch.float32):
                    pred = unet(
                        noisy.to(base.dtype),
                        t,
                        encoder_hidden_states=embeds.unsqueeze(0).to(base.dtype),
                    ).sample
                total += weight * float(F.mse_loss(pred.float(), target))
    return total / (len(examples) * len(EVAL_STRENGTHS))


def load_image_base(base_model_dir: str | Path) -> ImageBase:
    device, dtype = training_device(), training_dtype()
    pipe = StableDiffusionPipeline.from_pretrained(base_model_dir, dtype=dtype, safety_checker=None)
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ValueError(f"{base_model_dir} is an SDXL-style pipeline (two text encoders); not supported yet")
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return ImageBase(
        pipe=pipe,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        device=device,
        dtype=dtype,
        native_resolution=native,
    )


def save_unet_lora(base: ImageBase, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(base.pipe.unet, adapter_name=ADAPTER_NAME)
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=convert_state_dict_to_diffusers(state), safe_serialization=True
    )


class ImageTrainer:
    """UNet LoRA; scored by the evaluator-style reconstruction loss on held-out images."""

    max_val_rows = 16

    def __init__(self, image_root: str | Path | None = None) -> None:
        self.image_root = Path(image_root) if image_root is not None else None
        self._encoded = RowsCache()  # VAE latents and caption embeddings, reused by trials

    def default_hparams(self) -> HyperParams:
        return AUTOTRAIN_IMAGE

    def load(self, base_model_dir: Path) -> ImageBase:
        return load_image_base(base_model_dir)

    def _resolution(self, base: ImageBase, hp: HyperParams) -> int:
        side = hp.resolution or base.native_resolution
        if side % 64:
            raise ValueError(f"HyperParams.resolution must be a multiple of 64, not {side}")
        return side

    def _examples(self, base: ImageBase, rows: Sequence[dict], hp: HyperParams) -> list[ImageExample]:
        check_rows(rows, ("caption",), "image")
        side = self._resolution(base, hp)
        return self._encoded.get(rows, side, lambda: encode_rows(base, rows, side, self.image_root))

    def validation_loss(self, base: ImageBase, rows: Sequence[dict], hp: HyperParams) -> float:
        return reconstruction_loss(base, self._examples(base, rows, hp))

    def run_trial(
        self,
        base: ImageBase,
        train_rows: Sequence[dict],
        val_rows: Sequence[dict],
        hp: HyperParams,
        out_dir: Path,
        deadline: Deadline,
        seed: int,
        step_hint_s: float = 0.0,
    ) -> TrialRun:
        seed_everything(seed)
        hp = replace(hp, lora_alpha=hp.lora_r)  # see the module docstring
        train_examples = self._examples(base, train_rows, hp)
        val_examples = self._examples(base, val_rows, hp) if val_rows else []
        unet = base.pipe.unet
        unet.add_adapter(
            LoraConfig(
                r=hp.lora_r,
                lora_alpha=hp.lora_alpha,
                lora_dropout=hp.lora_dropout,
                init_lora_weights="gaussian",
                target_modules=UNET_LORA_TARGETS,
            ),
            adapter_name=ADAPTER_NAME,
        )
        try:
            for param in unet.parameters():
                if param.requires_grad:  # LoRA weights train in fp32 even on a bf16 UNet
                    param.data = param.data.float()
            stats = optimizer_loop(
                unet,
                train_examples,
                lambda m, batch: diffusion_loss(base, m, batch, hp.caption_dropout),
                hp,
                deadline,
                seed,
                step_hint_s,
            )
            save_unet_lora(base, out_dir)
            val = reconstruction_loss(base, val_examples) if val_examples else None
        finally:
            unet.delete_adapters(ADAPTER_NAME)
            unet.requires_grad_(False)
        return TrialRun(stats.steps, stats.stopped_by_deadline, val, stats.seconds, stats.step_seconds)
