"""Image reconstruction loss (eqs 7, 8, 16, 17) of diffusion LoRAs, base pipeline loaded once.

For each test row (image I, prompt p), each denoise strength s in `strengths` and each seed:
  1. z0 = VAE-encode(I) (the latent distribution's mean, times the VAE scaling factor);
  2. img2img noising: with N inference steps, start at step N - int(N*s) (at least one step to
     run), z = add_noise(z0, eps_seed, t_start) with eps_seed from a fixed torch.Generator;
  3. denoise the remaining steps with DDIM (eta = 0, deterministic), conditioned on the prompt
     (L_text) or on the empty prompt (L_no-text);
  4. L2 = mean squared error between I and the decoded reconstruction in [0, 1] pixel space.
Noise is identical for every submission and for both conditions. Per image: the mean over
strengths and seeds; per-example loss = delta*L_text + (1-delta)*L_no-text with delta = 0.25.
Submissions are LoRAs loaded into the one pipeline with diffusers' `load_lora_weights` and
swapped (`set_adapters`, then `delete_adapters`) one after the other. The baseline (with
`baseline`) is the same pipeline scored before any LoRA is loaded into it.
Supported bases: Stable-Diffusion-style pipelines (UNet + one CLIP text encoder).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from services.eval_worker.job import BASELINE_HOTKEY, EvalJob, ImageOptions
from services.eval_worker.model_loading import dtype_for, resolve_device
from services.eval_worker.text_eval import MemberResult
from services.eval_worker.validation import ValidatedSubmission

if TYPE_CHECKING:
    import torch


def row_prompt(row: dict[str, Any]) -> str:
    for key in ("prompt", "caption", "text"):
        if isinstance(row.get(key), str):
            return cast(str, row[key])
    raise ValueError("image row needs a 'prompt' (or 'caption') string")


def load_image(path: str | Path, resolution: int | None, multiple: int) -> torch.Tensor:
    """RGB image as a [3, H, W] float tensor in [0, 1]; H and W cropped to a multiple."""
    import numpy as np
    import torch
    from PIL import Image

    im: Image.Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        if resolution is not None:
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
        w, h = im.size
        w2, h2 = (w // multiple) * multiple, (h // multiple) * multiple
        if w2 == 0 or h2 == 0:
            raise ValueError(f"image {path} is smaller than {multiple} px")
        left, top = (w - w2) // 2, (h - h2) // 2
        im = im.crop((left, top, left + w2, top + h2))
        array = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def noise_seed(job_seed: int, image_index: int, strength_index: int, seed_index: int) -> int:
    digest = hashlib.sha256(f"{job_seed}:{image_index}:{strength_index}:{seed_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def start_step(num_steps: int, strength: float) -> int:
    """Index of the first denoising step run for this strength (diffusers' img2img rule)."""
    init = min(max(int(num_steps * strength), 1), num_steps)
    return num_steps - init


class ImageScorer:
    """Holds the pipeline, the encoded test images and their noise; scores the active weights."""

    def __init__(self, job: EvalJob, device: str):
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        self.job, self.opts, self.device = job, job.image, device
        self.dtype = dtype_for(device)
        self.pipe = StableDiffusionPipeline.from_pretrained(
            job.base_model_dir, safety_checker=None, requires_safety_checker=False, dtype=self.dtype
        ).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        self.scheduler.set_timesteps(self.opts.num_inference_steps, device=device)
        rows = job.test_rows + job.synth_rows
        self.n_test = len(job.test_rows)
        # Latents must survive every UNet downsampling.
        multiple = self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        root = Path(job.image_root) if job.image_root else None
        self.images = [
            load_image(root / r["image"] if root else r["image"], self.opts.resolution, multiple) for r in rows
        ]
        self.prompts = [row_prompt(r) for r in rows]
        with torch.inference_mode():
            self.latents = [
                self.pipe.vae.encode((im[None] * 2 - 1).to(device, self.dtype)).latent_dist.mean
                * self.pipe.vae.config.scaling_factor
                for im in self.images
            ]
        self.noise = {
            (i, s, k): torch.randn(
                self.latents[i].shape, generator=torch.Generator().manual_seed(noise_seed(self.opts.seed, i, s, k))
            ).to(device, self.dtype)
            for i in range(len(rows))
            for s in range(len(self.opts.strengths))
            for k in range(self.opts.seeds_per_level)
        }

    def _embed(self, prompts: list[str]) -> Any:
        tok = self.pipe.tokenizer
        ids = tok(
            prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return self.pipe.text_encoder(ids)[0]

    def score(self) -> tuple[list[float], list[float]]:
        """Per-image (L_text, L_no-text) with the pipeline's current weights."""
        import torch

        opts = self.opts
        n = len(self.images)
        text_sum, plain_sum = [0.0] * n, [0.0] * n
        count = len(opts.strengths) * opts.seeds_per_level
        with torch.inference_mode():
            cond = self._embed(self.prompts)
            uncond = self._embed([""])
            for i in range(n):
                # One batch per image: every strength's seeds, with and without the prompt.
                for s_idx, strength in enumerate(opts.strengths):
                    first = start_step(opts.num_inference_steps, strength)
                    timesteps = self.scheduler.timesteps[first:]
                    k = opts.seeds_per_level
                    noise = torch.cat([self.noise[(i, s_idx, j)] for j in range(k)])
                    z0 = self.latents[i].expand(k, -1, -1, -1)
                    z = self.scheduler.add_noise(z0, noise, timesteps[:1].repeat(k))
                    z = torch.cat([z, z])  # first k: with prompt, last k: without
                    enc = torch.cat([cond[i : i + 1].expand(k, -1, -1), uncond.expand(k, -1, -1)])
                    for t in timesteps:
                        eps = self.pipe.unet(z, t, encoder_hidden_states=enc).sample
                        if opts.guidance_scale != 1.0:
                            eps_u = self.pipe.unet(z[:k], t, encoder_hidden_states=uncond.expand(k, -1, -1)).sample
                            eps = torch.cat([eps_u + opts.guidance_scale * (eps[:k] - eps_u), eps[k:]])
                        z = self.scheduler.step(eps, t, z, eta=0.0).prev_sample
                    decoded = self.pipe.vae.decode(z / self.pipe.vae.config.scaling_factor).sample
                    recon = ((decoded.float() + 1) / 2).clamp(0, 1)
                    target = self.images[i].to(self.device)[None]
                    mse = ((recon - target) ** 2).mean(dim=(1, 2, 3)).cpu().tolist()
                    text_sum[i] += sum(mse[:k])
                    plain_sum[i] += sum(mse[k:])
        return [v / count for v in text_sum], [v / count for v in plain_sum]


def combine(text: list[float], plain: list[float], opts: ImageOptions) -> list[float]:
    return [opts.text_weight * t + (1 - opts.text_weight) * p for t, p in zip(text, plain)]


def _member_result(job: EvalJob, n_test: int, text: list[float], plain: list[float]) -> MemberResult:
    per_image = combine(text, plain, job.image)
    return MemberResult(
        ok=True,
        test=per_image[:n_test],
        synth=per_image[n_test:],
        extras={
            "loss_text": sum(text[:n_test]) / n_test,
            "loss_no_text": sum(plain[:n_test]) / n_test,
        },
    )


def evaluate_image_group(
    job: EvalJob, members: list[ValidatedSubmission], baseline: bool = False
) -> dict[str, MemberResult]:
    device = resolve_device(job.device)
    scorer = ImageScorer(job, device)
    results: dict[str, MemberResult] = {}
    if baseline:
        # First, while no LoRA has touched the pipeline: the base model as it is.
        results[BASELINE_HOTKEY] = _member_result(job, scorer.n_test, *scorer.score())
    for index, member in enumerate(members):
        name = f"sub{index}"
        try:
            scorer.pipe.load_lora_weights(member.path, weight_name=member.weight_file, adapter_name=name)
            scorer.pipe.set_adapters([name])
        except Exception as exc:
            results[member.hotkey] = MemberResult(ok=False, reason=f"LoRA could not be loaded: {exc}"[:2000])
            try:
                scorer.pipe.delete_adapters([name])
            except Exception:  # nothing was attached
                pass
            continue
        text, plain = scorer.score()
        scorer.pipe.delete_adapters([name])
        results[member.hotkey] = _member_result(job, scorer.n_test, text, plain)
    return results
