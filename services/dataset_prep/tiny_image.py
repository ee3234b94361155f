"""A tiny Stable Diffusion pipeline built from configs, for tests and quick demos.

Nothing is downloaded: the UNet, VAE and CLIP text encoder are randomly initialised with a
fixed seed, and the tokenizer is the locally trained one from `gradients.models.tiny`
(a CLIPTokenizer needs vocab files we cannot fetch offline). The VAE has two blocks, so its
scale factor is 2: 32x32 latents decode to 64x64 images, and a 64x64 generation takes a
fraction of a second on CPU. The saved folder loads with
`StableDiffusionPipeline.from_pretrained` and `StableDiffusionImg2ImgPipeline.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

# Kept in one place so the eval worker can build the same shapes.
TINY_SD_TEXT_HIDDEN = 32
TINY_SD_MAX_TOKENS = 32
TINY_SD_LATENT_SIZE = 32  # -> 64x64 images with the 2-block VAE


def build_tiny_sd_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny `StableDiffusionPipeline` (safetensors) under out_dir and return the path."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from gradients.models.tiny import build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    # The pipeline pads prompts to model_max_length; the default (huge) would not fit.
    tokenizer.model_max_length = TINY_SD_MAX_TOKENS

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_SD_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_SD_TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=TINY_SD_LATENT_SIZE * 2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_SD_TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_SD_MAX_TOKENS,
            projection_dim=TINY_SD_TEXT_HIDDEN,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out
