"""Random-weight Stable Diffusion pipelines built entirely offline.

``tiny`` is a real ``StableDiffusionPipeline`` (cross-attention UNet, four-block VAE so latents are 8x smaller,
CLIP text encoder, the project's own tokenizer) scaled down so a 256x256 image at 20 steps takes about half a
second on two CPU cores. Its UNet and text encoder have random (seeded) weights, so its text-to-image output is
noise-like but fully deterministic, which is what the tests, the demo playground and the ``fallback_to_tiny`` mode
need. Its VAE, though, is a real (crude) autoencoder: with a random one decode(encode(x)) does not resemble x, and
img2img features (Upscale, Vary, image input) could not be tested for resemblance. The VAE weights are fitted once by
``python -m generation.fit_tiny_vae`` and shipped as ``assets/tiny_vae.safetensors`` (288 KB) rather than
fitted at first use: fitting takes minutes of CPU, while tests, CI and the playground must start in a second and
get the same weights everywhere, whatever the machine. ``sd15-random`` has Stable Diffusion 1.5's exact
architecture with random weights so the benchmark measures real-size compute without downloading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from generation.tokenizer import build_offline_clip_tokenizer

TINY_SEED = 20240501
TINY_VAE_WEIGHTS = Path(__file__).parent / "assets" / "tiny_vae.safetensors"

# The noise schedule every SD 1.x checkpoint was trained with; make_scheduler() derives all samplers from it.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    # Attention only at the lower resolution: self-attention over 32x32=1024 latent tokens would dominate.
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}

TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    # One GroupNorm group (SD has 4 channels per group): with 8 channels in groups of 2, the decoder's last
    # GroupNorm maps any flat picture to +-1 per channel, keeping only signs of its colour. One group also lets
    # the fit start from an exact pooling autoencoder (generation/fit_tiny_vae.py). Parameter count unchanged.
    "norm_num_groups": 1,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

TINY_TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


def _text_config(vocab_size: int, bos: int, eos: int, **sizes: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_act="quick_gelu",
        **sizes,
    )


def _assemble(unet_config: dict[str, Any], vae_config: dict[str, Any], text_sizes: dict[str, Any],
              dtype: torch.dtype, seed: int, vocab_size: int | None = None,
              vae_weights: Path | None = None) -> StableDiffusionPipeline:
    """Build the components under a fixed seed, leaving the caller's global RNG state untouched. The VAE is still
    initialised randomly before ``vae_weights`` replace its weights, so the text encoder's init stays the same."""
    tokenizer = build_offline_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(
            _text_config(vocab_size or len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, **text_sizes)
        )
    if vae_weights is not None:
        if not vae_weights.is_file():
            raise FileNotFoundError(f"{vae_weights} is missing from the installation: reinstall imagine-bot, or "
                                    "recreate it with: python -m generation.fit_tiny_vae")
        vae.load_state_dict(load_file(str(vae_weights)), strict=True)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for model in (unet, vae, text_encoder):
        model.eval()
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def build_tiny_pipeline(dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """The built-in ``tiny`` model: same weights on every call (fixed init seed, fitted VAE), on the CPU."""
    return _assemble(TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_SIZES, dtype, TINY_SEED, vae_weights=TINY_VAE_WEIGHTS)


def build_sd15_random_pipeline(dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """SD 1.5's exact architecture (UNet 320/640/1280/1280, VAE 128/256/512/512, CLIP ViT-L text) with random
    weights; for the benchmark only. The token embedding has CLIP's 49408 rows; our tokenizer uses the first ids."""
    return _assemble(
        SD15_UNET_CONFIG,
        SD15_VAE_CONFIG,
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "projection_dim": 768},
        dtype,
        TINY_SEED + 15,
        vocab_size=49408,
    )
