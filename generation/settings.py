"""Typed settings for the generation engine (the ``generation`` section of config.yaml).

They live here, not in ``bot``, so that ``generation`` stays usable without the Discord side.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Model, style and LoRA names appear in slash-command choices, PNG text and logs: keep them plain.
NAME = re.compile(r"^[\w][\w .+-]{0,63}$")
ADAPTER_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def source_display_name(source: str) -> str:
    """The name a model source is shown (and recorded) under: ``tiny``, a hub id, or the file/folder name."""
    if source == "tiny":
        return "tiny"
    if HUB_ID.match(source) and not Path(source).exists():
        return source
    return Path(source).name or source


class LoraSettings(BaseModel):
    """One LoRA file of a style: loaded with diffusers' ``load_lora_weights`` under ``name`` (its adapter name)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a .safetensors LoRA file (diffusers/kohya layout) or a folder holding one")
    weight: float = Field(1.0, ge=-4, le=4)
    name: str = Field("", description="adapter name, also written as <lora:name:weight>; default: the file's stem")

    @model_validator(mode="after")
    def _default_name(self) -> LoraSettings:
        # peft keeps adapters in module dicts, whose keys may not contain dots
        name = ADAPTER_NAME.sub("_", self.name or Path(self.path).stem).strip("_")
        if not name:
            raise ValueError(f"cannot derive a LoRA name from {self.path!r}; set name:")
        self.name = name
        return self


class StyleSettings(BaseModel):
    """A named style: a prompt template, extra negative words and LoRAs applied together."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("{prompt}", description="template; {prompt} is replaced by the member's prompt")
    negative: str = Field("", description="appended to the member's negative prompt")
    loras: list[LoraSettings] = Field(default_factory=list)

    @field_validator("prompt")
    @classmethod
    def _one_placeholder(cls, value: str) -> str:
        if value.count("{prompt}") != 1:
            raise ValueError("the style's prompt template must contain {prompt} exactly once")
        return value


class GenerationSettings(BaseModel):
    """What model runs where, the request bounds members get, and the worker's queue and batch sizes."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="hub id, local diffusers folder, .safetensors/.ckpt file, or 'tiny'; "
                       "the only model when `models` is empty")
    models: dict[str, str] = Field(default_factory=dict, description="name -> source (same forms as `model`)")
    default_model: str | None = Field(None, description="a name from `models`; default: the first one")
    max_loaded_models: int = Field(2, ge=1, description="models kept loaded; the least recently used is unloaded")
    styles: dict[str, StyleSettings] = Field(default_factory=dict)
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

    default_strength: float = Field(0.75, ge=0.05, le=1.0, description="img2img strength when none is given")
    vary_subtle_strength: float = Field(0.35, ge=0.05, le=1.0)
    vary_strong_strength: float = Field(0.75, ge=0.05, le=1.0)
    upscale_factor: float = Field(2.0, gt=1.0, le=4.0)
    upscale_strength: float = Field(0.35, ge=0.05, le=1.0, description="img2img strength of the hires-fix pass")
    max_upscale_pixels: int = Field(1024 * 1024, ge=64 * 64, description="width*height of an upscale at most")
    upscaler: str | None = Field(None, description="hub id or local folder of a diffusers x4 or latent upscaler; "
                                 "null: upscale by hires fix (resize + img2img with the loaded model)")

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
        if self.models and "model" in self.model_fields_set:
            raise ValueError("set either model (one model) or models (several, by name), not both")
        for what, names in (("model", self.models), ("style", self.styles)):
            for name in names:
                if not NAME.match(name):
                    raise ValueError(f"{what} name {name!r} must be 1-64 letters, digits, spaces or _ . + -")
        if self.default_model is not None and self.default_model not in self.model_sources():
            raise ValueError(f"default_model {self.default_model!r} is not one of the models: "
                             f"{', '.join(self.model_sources())}")
        paths: dict[str, str] = {}
        for style_name, style in self.styles.items():
            for lora in style.loras:
                if paths.setdefault(lora.name, lora.path) != lora.path:
                    raise ValueError(f"style {style_name!r}: LoRA name {lora.name!r} is used for two files "
                                     f"({paths[lora.name]} and {lora.path}); give one of them another name:")
        return self

    def model_sources(self) -> dict[str, str]:
        """Model name -> source; a config with the single ``model`` key has one entry under its display name."""
        return dict(self.models) if self.models else {source_display_name(self.model): self.model}

    @property
    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.model_sources()))

    def lora_paths(self) -> dict[str, str]:
        """Adapter name -> LoRA file, over every style (names are unique, checked above)."""
        return {lora.name: lora.path for style in self.styles.values() for lora in style.loras}
