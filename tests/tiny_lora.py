"""A LoRA file for ``tiny``, made by the tests that need one (generation styles, the end-to-end style test)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from generation.tiny import build_tiny_pipeline


def make_tiny_lora(folder: Path, seed: int, scale: float = 4.0) -> Path:
    """A LoRA on tiny's UNet attention with non-zero up weights (peft's default init leaves them zero, which would
    change nothing), saved the way diffusers' training scripts save one."""
    pipe = build_tiny_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=int(4 * scale), init_lora_weights=False,
                                         target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"
