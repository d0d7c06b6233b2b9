"""Files the generation tests make for themselves: a LoRA for ``tiny`` and a miniature x4 upscaler (random weights,
real diffusers classes), so styles and the upscaler path run for real without anything downloaded."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from generation.tiny import TINY_TEXT_SIZES, build_tiny_pipeline
from generation.tokenizer import build_offline_clip_tokenizer


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


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lora(tmp_path_factory.mktemp("lora-a"), seed=1)


@pytest.fixture(scope="session")
def other_tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lora(tmp_path_factory.mktemp("lora-b"), seed=2)


@pytest.fixture(scope="session")
def tiny_x4_upscaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A StableDiffusionUpscalePipeline (the x4 upscaler's classes and layout) in miniature, saved as a folder."""
    tokenizer = build_offline_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=7, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TINY_TEXT_SIZES["hidden_size"], attention_head_dim=4, norm_num_groups=8,
            num_class_embeds=1000,
        )
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16),
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            norm_num_groups=4, scaling_factor=0.08333)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, **TINY_TEXT_SIZES))
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350)
    folder = tmp_path_factory.mktemp("x4-upscaler")
    pipe.save_pretrained(folder)
    return folder


def _picture(size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (200, 120, 40), mode: str = "RGB",
             fmt: str = "PNG") -> bytes:
    """A small picture with a square in it, encoded as ``fmt``."""
    image = Image.new("RGB", size, colour)
    image.paste((20, 40, 220), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def picture() -> Callable[..., bytes]:
    """``picture(size=(64, 64), colour=..., mode="RGB", fmt="PNG")``: encoded bytes of a small test picture."""
    return _picture
