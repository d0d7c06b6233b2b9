"""Turn a model source into a ready pipeline on the right device, or a :class:`ModelLoadError` that says
what was tried and what to set instead (the admin sees a sentence, never a traceback).
:mod:`generation.models` decides which configured model is loaded when; this module loads one.

Accepted values: ``tiny`` (built in), a local diffusers folder, a single ``.safetensors``/``.ckpt`` checkpoint
in the original Stable Diffusion key layout, or a Hugging Face hub id (local cache first, then a download).

Single files: diffusers' ``from_single_file`` needs the diffusers configs of the base model, which it normally
fetches from the hub. Offline we pass ``config=`` a local folder instead: ``generation.single_file_config``
when set, a generated config folder for checkpoints with the ``tiny`` architecture, otherwise the hub cache
(``local_files_only``). A real SD 1.x checkpoint without network therefore needs ``single_file_config`` pointing
at a local diffusers copy of its base model (only the json/tokenizer files are read from it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
)
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

from generation.settings import HUB_ID, GenerationSettings, source_display_name
from generation.tiny import TINY_TEXT_SIZES, TINY_UNET_CONFIG, build_tiny_pipeline
from generation.tokenizer import build_offline_clip_tokenizer, cache_root

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
WHAT_TO_SET = ("Set generation.model (or the entry in generation.models) to a local diffusers folder, a "
               ".safetensors/.ckpt file, or 'tiny' (or set generation.fallback_to_tiny: true to start with the "
               "test model).")
# diffusers upscaler pipelines -> how many times bigger their output is than their input
UPSCALER_SCALES: dict[type[DiffusionPipeline], int] = {
    StableDiffusionUpscalePipeline: 4,
    StableDiffusionLatentUpscalePipeline: 2,
}


class ModelLoadError(Exception):
    """The model could not be loaded; ``str(exc)`` says what was tried and what to set instead."""


@dataclass
class LoadedModel:
    """A pipeline placed on its device, plus what the rest of the bot shows about it."""

    pipeline: StableDiffusionPipeline
    name: str
    device: torch.device
    dtype: torch.dtype
    is_fallback: bool = False
    banner: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapter name -> file, loaded into this pipeline


@dataclass
class LoadedUpscaler:
    """``generation.upscaler``: a diffusers x4 or latent upscaler, ``scale`` times bigger output than input."""

    pipeline: DiffusionPipeline
    name: str
    scale: int


# --------------------------------------------------------------------------- device and dtype


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("generation.device is 'cuda' but PyTorch sees no CUDA GPU (is this the CPU build of "
                             "torch?). Set generation.device to 'auto' or 'cpu'.")
    if choice == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("generation.device is 'mps' but Apple MPS is not available. "
                             "Set generation.device to 'auto' or 'cpu'.")
    return torch.device(choice)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on a GPU (half the memory, tensor cores), fp32 on the CPU (fp16 matmuls are slow there)."""
    if choice == "fp16":
        return torch.float16
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp32":
        return torch.float32
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


# --------------------------------------------------------------------------- original (LDM) checkpoint layout


def _unet_prefixes(config: dict[str, Any], keys: set[str]) -> list[tuple[str, str]]:
    """diffusers -> LDM key prefixes for a UNet with any number of levels and ``layers_per_block``."""
    per = config["layers_per_block"] + 1
    levels = len(config["block_out_channels"])
    pairs = [("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.0.", "middle_block.0."),
             ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(levels):
        for j in range(per - 1):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per * i + j + 1}.1."))
        for j in range(per):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{per * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{per * i + j}.1."))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per * (i + 1)}.0.op."))
            up_has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys)
            slot = 2 if up_has_attention else 1  # the upsampler follows the attention when there is one
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{per * i + per - 1}.{slot}."))
    return pairs


_UNET_RESNET_PARTS = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                      ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                      ("conv_shortcut", "skip_connection")]
_VAE_ATTENTION_PARTS = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                        ("to_out.0.", "proj_out.")]


def _rename(key: str, prefixes: list[tuple[str, str]], top: dict[str, str], what: str) -> tuple[str, str, str]:
    """(LDM prefix, rest of the key, matched diffusers prefix); top-level keys come back whole with no prefix."""
    if key in top:
        return "", top[key], ""
    for hf, ldm in prefixes:
        if key.startswith(hf):
            return ldm, key[len(hf):], hf
    raise ValueError(f"cannot map {what} weight {key!r} to the original checkpoint layout")


def _replace_parts(rest: str, parts: list[tuple[str, str]]) -> str:
    for hf_part, ldm_part in parts:
        if rest.startswith(hf_part):
            return ldm_part + rest[len(hf_part):]
    return rest


def original_state_dict(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original CompVis/A1111 single-file layout (the inverse of diffusers'
    ``convert_ldm_*`` functions), so tests and users can produce a ``.safetensors`` the web UIs also read."""
    out: dict[str, torch.Tensor] = {}
    unet_sd = pipe.unet.state_dict()
    prefixes = _unet_prefixes(dict(pipe.unet.config), set(unet_sd))
    for key, value in unet_sd.items():
        ldm, rest, matched = _rename(key, prefixes, DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], "UNet")
        if ".resnets." in matched:
            rest = _replace_parts(rest, [(f"{hf}.", f"{ldm_part}.") for hf, ldm_part in _UNET_RESNET_PARTS])
        out[UNET_PREFIX + ldm + rest] = value

    vae_sd = pipe.vae.state_dict()
    levels = len(pipe.vae.config.block_out_channels)
    per = pipe.vae.config.layers_per_block
    vae_prefixes: list[tuple[str, str]] = []
    for i in range(levels):
        vae_prefixes += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(per)]
        vae_prefixes += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.")
                         for j in range(per + 1)]
        if i < levels - 1:
            vae_prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            vae_prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."))
    for part in ("encoder", "decoder"):
        vae_prefixes += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
        vae_prefixes.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for key, value in vae_sd.items():
        ldm, rest, matched = _rename(key, vae_prefixes, DIFFUSERS_TO_LDM_MAPPING["vae"], "VAE")
        if ".resnets." in matched:
            rest = _replace_parts(rest, [("conv_shortcut.", "nin_shortcut.")])
        elif matched.endswith(".attentions.0."):
            rest = _replace_parts(rest, _VAE_ATTENTION_PARTS)
            if value.ndim == 2:  # the original VAE attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out[VAE_PREFIX + ldm + rest] = value

    for key, value in pipe.text_encoder.state_dict().items():
        # transformers 5 names CLIPTextModel weights without the "text_model." level the original files have.
        out[TEXT_PREFIX + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def save_single_file(pipe: StableDiffusionPipeline, path: str | os.PathLike[str]) -> Path:
    """Write *pipe* as one ``.safetensors`` file in the original SD layout."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(original_state_dict(pipe), str(path), metadata={"format": "pt", "written_by": "imagine-bot"})
    return path


# --------------------------------------------------------------------------- loaders


@lru_cache(maxsize=1)
def tiny_config_folder() -> Path:
    """A diffusers folder with the ``tiny`` architecture's configs and tokenizer, for ``from_single_file``."""
    from generation import tiny

    spec = json.dumps([tiny.TINY_UNET_CONFIG, tiny.TINY_VAE_CONFIG, tiny.TINY_TEXT_SIZES, tiny.SD_SCHEDULER_CONFIG,
                       tiny.TINY_SEED, build_offline_clip_tokenizer().get_vocab()], sort_keys=True, default=str)
    target = cache_root() / f"tiny-config-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"  # stale-proof
    if not (target / "model_index.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tiny-"))
        build_tiny_pipeline().save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # someone else wrote it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a checkpoint, reading only the header for safetensors."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError("the file holds no state dict")
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _is_tiny_architecture(shapes: dict[str, tuple[int, ...]]) -> bool:
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    tokens = shapes.get(TEXT_PREFIX + "text_model.embeddings.token_embedding.weight")
    return (conv_in is not None and conv_in[0] == TINY_UNET_CONFIG["block_out_channels"][0]
            and tokens is not None and tokens[1] == TINY_TEXT_SIZES["hidden_size"])


def _load_single_file(path: Path, settings: GenerationSettings, dtype: torch.dtype) -> StableDiffusionPipeline:
    try:
        shapes = _read_shapes(path)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable {path.suffix} checkpoint ({type(exc).__name__}: "
                             f"{str(exc)[:200]}). {WHAT_TO_SET}") from exc
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        raise ModelLoadError(f"{path} is not a Stable Diffusion checkpoint (it has no '{UNET_PREFIX}*' UNet "
                             f"weights). {WHAT_TO_SET}")
    config = settings.single_file_config
    if config is None and _is_tiny_architecture(shapes):
        config = str(tiny_config_folder())
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True, "safety_checker": None,
                              "requires_safety_checker": False}
    if config is not None:
        kwargs["config"] = str(config)
    try:
        return StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except Exception as exc:
        hint = ("" if config else " Without network the base model's configs must come from a local folder: set "
                "generation.single_file_config to a local diffusers copy of the base model (e.g. a downloaded "
                "stable-diffusion-v1-5 folder; only its json and tokenizer files are read).")
        raise ModelLoadError(f"could not load the single-file checkpoint {path} "
                             f"({type(exc).__name__}: {str(exc)[:300]}).{hint} {WHAT_TO_SET}") from exc


def _load_folder(path: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path} is a folder but not a diffusers pipeline (no model_index.json). "
                             f"{WHAT_TO_SET}")
    try:
        return StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True,
                                                       safety_checker=None, requires_safety_checker=False)
    except Exception as exc:
        raise ModelLoadError(f"could not load the diffusers folder {path} ({type(exc).__name__}: "
                             f"{str(exc)[:300]}). {WHAT_TO_SET}") from exc


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load_hub(model_id: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        return StableDiffusionPipeline.from_pretrained(model_id, local_files_only=True, **kwargs)
    except Exception as exc:
        cache_error = exc
    log.info("%s is not in the local Hugging Face cache; downloading it", model_id)
    if _offline():
        download = "not attempted because HF_HUB_OFFLINE is set"
    else:
        try:
            return StableDiffusionPipeline.from_pretrained(model_id, **kwargs)
        except Exception as exc:
            download = f"failed ({type(exc).__name__}: {str(exc)[:200]})"
            cache_error = exc
    raise ModelLoadError(f"could not load the hub model {model_id!r}: there is no local folder of that name, it is "
                         f"not in the local Hugging Face cache and the download {download}. {WHAT_TO_SET}"
                         ) from cache_error


def _load_pipeline(model: str, settings: GenerationSettings, dtype: torch.dtype) -> StableDiffusionPipeline:
    if model == "tiny":
        return build_tiny_pipeline(dtype)
    path = Path(model).expanduser()
    if path.is_dir():
        return _load_folder(path, dtype)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{path} is a {path.suffix or 'suffix-less'} file; expected a folder or one of "
                                 f"{', '.join(SINGLE_FILE_SUFFIXES)}. {WHAT_TO_SET}")
        return _load_single_file(path, settings, dtype)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES or model.startswith(("/", ".", "~")) or os.sep in model[:1]:
        raise ModelLoadError(f"no such file or folder: {path}. {WHAT_TO_SET}")
    if HUB_ID.match(model):
        return _load_hub(model, dtype)
    raise ModelLoadError(f"generation.model = {model!r} is neither 'tiny', an existing file or folder, nor a "
                         f"hub id like 'owner/name'. {WHAT_TO_SET}")


def _place(pipe: StableDiffusionPipeline, settings: GenerationSettings, device: torch.device) -> None:
    """Device placement and the memory/speed switches from the settings."""
    pipe.set_progress_bar_config(disable=True)
    if settings.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if settings.cpu_offload:
            log.warning("generation.cpu_offload only applies to CUDA; ignored on %s", device.type)
        pipe.to(device)
    # diffusers uses PyTorch SDPA (AttnProcessor2_0) by default; slicing trades speed for memory.
    if settings.attention_slicing:
        pipe.enable_attention_slicing()
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.compile:
        pipe.unet.compile()


def _fallback_banner(model: str, reason: str) -> str:
    return (f"Running the built-in 'tiny' test model because {model!r} could not be loaded: {reason} "
            "Its images are random patterns, not real pictures. To get real images, set generation.model to a "
            "local diffusers folder or .safetensors file (or a hub id with internet access) and restart.")


def _as_load_error(source: str, exc: Exception) -> ModelLoadError:
    if isinstance(exc, ModelLoadError):
        return exc
    return ModelLoadError(f"could not load {source!r} ({type(exc).__name__}: {str(exc)[:300]}). {WHAT_TO_SET}")


def load_model(source: str, settings: GenerationSettings, *, name: str | None = None) -> LoadedModel:
    """Load one model ``source`` onto ``settings.device`` as ``name``; raise :class:`ModelLoadError` (no fallback)."""
    try:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        log.info("loading model %r on %s as %s", source, device, dtype)
        pipe = _load_pipeline(source, settings, dtype)
        _place(pipe, settings, device)
    except Exception as exc:
        error = _as_load_error(source, exc)
        if error is exc:
            raise
        raise error from exc
    return LoadedModel(pipeline=pipe, name=name or source_display_name(source), device=device, dtype=dtype)


def tiny_fallback(source: str, error: ModelLoadError, settings: GenerationSettings) -> LoadedModel:
    """``tiny`` in place of ``source`` (for ``fallback_to_tiny``), with a banner saying why."""
    log.warning("model load failed, falling back to tiny: %s", error)
    try:
        device = resolve_device(settings.device)
    except ModelLoadError:
        device = torch.device("cpu")
    dtype = torch.float32 if device.type == "cpu" else resolve_dtype(settings.dtype, device)
    pipe = build_tiny_pipeline(dtype)
    pipe.to(device)
    return LoadedModel(pipeline=pipe, name="tiny", device=device, dtype=dtype, is_fallback=True,
                       banner=_fallback_banner(source, str(error)))


def load_pipeline(settings: GenerationSettings) -> LoadedModel:
    """Load the default model; raise :class:`ModelLoadError`, or with ``fallback_to_tiny`` return ``tiny`` with
    ``is_fallback=True`` and a banner explaining why."""
    name = settings.default_model_name
    source = settings.model_sources()[name]
    try:
        return load_model(source, settings, name=name)
    except ModelLoadError as exc:
        if not settings.fallback_to_tiny or source == "tiny":
            raise
        return tiny_fallback(source, exc, settings)


def load_upscaler(source: str, settings: GenerationSettings) -> LoadedUpscaler:
    """``generation.upscaler`` (a local diffusers folder or a cached hub id), checked to be an upscaler."""
    try:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        path = Path(source).expanduser()
        if not path.is_dir() and not HUB_ID.match(source):
            raise ModelLoadError(f"generation.upscaler = {source!r} is neither a local diffusers folder nor a hub "
                                 "id like 'owner/name'.")
        if path.is_dir():
            pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        else:
            try:
                pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=dtype, local_files_only=True)
            except Exception:
                if _offline():
                    raise
                log.info("upscaler %s is not in the local Hugging Face cache; downloading it", source)
                pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=dtype)
        scale = UPSCALER_SCALES.get(type(pipe))
        if scale is None:
            kinds = " or ".join(cls.__name__ for cls in UPSCALER_SCALES)
            raise ModelLoadError(f"generation.upscaler = {source!r} is a {type(pipe).__name__}, not a {kinds}.")
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
    except Exception as exc:
        error = exc if isinstance(exc, ModelLoadError) else ModelLoadError(
            f"could not load the upscaler {source!r} ({type(exc).__name__}: {str(exc)[:300]}). Set "
            "generation.upscaler to a local diffusers folder of an x4 or latent upscaler, or to null for hires fix.")
        if error is exc:
            raise
        raise error from exc
    return LoadedUpscaler(pipeline=pipe, name=source_display_name(source), scale=scale)
