"""Typed settings for the generation engine (the ``generation`` section of config.yaml).

They live here, not in ``bot``, so that ``generation`` stays usable without the Discord side.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class GenerationSettings(BaseModel):
    """What model runs where, the request bounds members get, and the worker's queue and batch sizes."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="hub id, local diffusers folder, .safetensors/.ckpt file, or 'tiny'")
    single_file_config: str | None = Field(
        None, description="local diffusers folder of the base model, for a single-file model without network"
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    fallback_to_tiny: bool = Field(
        False, description="when the model cannot be loaded, run 'tiny' with a visible banner instead of stopping"
    )
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    compile: bool = False
    safety_checker: str | None = Field(None, description="hub id or local folder of a StableDiffusionSafetyChecker")

    default_steps: int = Field(25, ge=1)
    max_steps: int = Field(50, ge=1)
    default_guidance: float = Field(7.5, ge=0, le=30)
    default_width: int = Field(512, ge=8)
    default_height: int = Field(512, ge=8)
    min_size: int = Field(256, ge=8)
    max_size: int = Field(1024, ge=8)
    max_pixels: int = Field(1024 * 1024, ge=64)
    default_scheduler: str = "euler_a"

    max_batch_size: int = Field(4, ge=1, description="images per batched pipeline call")
    queue_size: int = Field(64, ge=1, description="jobs waiting at most; beyond it members get 'queue full'")
    previews: bool = Field(True, description="send a cheap latent->RGB preview with progress")

    @model_validator(mode="after")
    def _bounds_are_consistent(self) -> GenerationSettings:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        if self.default_steps > self.max_steps:
            raise ValueError(f"default_steps ({self.default_steps}) must not exceed max_steps ({self.max_steps})")
        for name in ("min_size", "max_size", "default_width", "default_height"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {getattr(self, name)}")
        return self
