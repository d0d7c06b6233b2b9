"""The output safety checker: flags generated images with an image classifier (diffusers'
``StableDiffusionSafetyChecker`` in practice). What the bot does with a flagged image is its own policy
(:mod:`bot.discord.output_safety`); this module only loads the classifier and runs it.

The checker is heavy (torch, a CLIP vision tower), so torch/diffusers are imported only when one is loaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

log = logging.getLogger(__name__)


@runtime_checkable
class OutputChecker(Protocol):
    """Anything that flags images; True means "flagged as unsafe". Synchronous: call it off the event loop."""

    def check(self, images: list[Image.Image]) -> list[bool]: ...


class SafetyCheckerLoadError(Exception):
    """The configured safety checker cannot be loaded; the message says what was tried and what to set."""


class DiffusersSafetyChecker:
    """:class:`OutputChecker` backed by diffusers' ``StableDiffusionSafetyChecker`` and a CLIP image processor."""

    def __init__(self, model: Any, feature_extractor: Any, device: str = "cpu") -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.device = device

    def check(self, images: list[Image.Image]) -> list[bool]:
        if not images:
            return []
        import numpy as np
        import torch

        rgb = [image.convert("RGB") for image in images]
        inputs = self.feature_extractor(images=rgb, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        clip_input = inputs["pixel_values"].to(device=self.device, dtype=dtype)
        # The checker blacks out flagged entries of `images`; hand it tiny placeholders, not our pictures.
        placeholders = [np.zeros((1, 1, 3), dtype=np.float32) for _ in rgb]
        with torch.no_grad():
            _, flags = self.model(clip_input=clip_input, images=placeholders)
        return [bool(flag) for flag in flags]


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or (len(spec) > 1 and spec[1] == ":")


def load_safety_checker(
    spec: str | None, device: str = "cpu", *, local_files_only: bool | None = None
) -> OutputChecker | None:
    """Load the checker named by ``generation.safety_checker``; None when none is configured.

    ``spec`` is a local folder (either the checker itself, with ``config.json`` and optionally
    ``preprocessor_config.json``, or a full pipeline folder with ``safety_checker/`` and ``feature_extractor/``)
    or a hub id such as ``CompVis/stable-diffusion-safety-checker``. Hub ids are read from the local cache
    first and downloaded only when that fails and ``HF_HUB_OFFLINE`` is not set (``local_files_only=True``
    forbids the download explicitly). Raises :class:`SafetyCheckerLoadError` with a message for the admin.
    Loading takes seconds and checking is synchronous: do both off the event loop.
    """
    if spec is None or not spec.strip():
        return None
    spec = spec.strip()
    # Config mistakes about folders are reported before the (slow) diffusers import.
    path = Path(spec).expanduser()
    model_dir: Path | None = None
    if path.exists():
        model_dir = _checker_folder(path)
    elif _looks_like_path(spec):
        raise SafetyCheckerLoadError(
            f"generation.safety_checker = {spec!r}: no such folder. Point it at a folder holding the checker's "
            "config.json and weights (or a full pipeline folder with safety_checker/), a hub id such as "
            "'CompVis/stable-diffusion-safety-checker', or remove the key to run without a checker."
        )
    try:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor
    except ImportError as exc:  # pragma: no cover - both are hard dependencies
        raise SafetyCheckerLoadError(f"generation.safety_checker needs diffusers and transformers ({exc}).") from None
    if model_dir is not None:
        return _load_local(path, model_dir, device, StableDiffusionSafetyChecker, CLIPImageProcessor)
    offline = _hub_offline() if local_files_only is None else local_files_only
    return _load_hub(spec, device, StableDiffusionSafetyChecker, CLIPImageProcessor, offline)


def _checker_folder(path: Path) -> Path:
    """The folder holding the checker's config.json: ``path`` itself or its ``safety_checker/``."""
    if not path.is_dir():
        raise SafetyCheckerLoadError(
            f"generation.safety_checker = '{path}': is a file; it must be a folder with the checker's config.json "
            "and weights (save it with StableDiffusionSafetyChecker.save_pretrained)."
        )
    model_dir = path / "safety_checker" if (path / "safety_checker" / "config.json").is_file() else path
    if not (model_dir / "config.json").is_file():
        raise SafetyCheckerLoadError(
            f"generation.safety_checker = '{path}': no config.json in it (nor in safety_checker/). Expected a folder "
            "saved by StableDiffusionSafetyChecker.save_pretrained or a full Stable Diffusion pipeline folder."
        )
    return model_dir


def _load_local(path: Path, model_dir: Path, device: str, checker_cls: Any, processor_cls: Any) -> OutputChecker:
    try:
        model = checker_cls.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise SafetyCheckerLoadError(
            f"generation.safety_checker = '{path}': the checker in '{model_dir}' cannot be loaded "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    processor = None
    for candidate in (path / "feature_extractor", model_dir, path):
        if (candidate / "preprocessor_config.json").is_file():
            try:
                processor = processor_cls.from_pretrained(str(candidate), local_files_only=True)
            except Exception as exc:
                raise SafetyCheckerLoadError(
                    f"generation.safety_checker = '{path}': the image processor in '{candidate}' cannot be loaded "
                    f"({type(exc).__name__}: {exc})."
                ) from exc
            break
    if processor is None:
        # The CLIP preprocessing every SD release uses is CLIPImageProcessor's defaults (224 px, CLIP mean/std).
        log.warning("no preprocessor_config.json next to the safety checker in %s; using CLIP defaults", path)
        processor = processor_cls()
    return _finish(model, processor, device)


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as the environment says now (huggingface_hub reads it only once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of diffusers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _load_hub(spec: str, device: str, checker_cls: Any, processor_cls: Any, offline: bool) -> OutputChecker:
    errors: list[str] = []
    # The cache first (fast, works offline); a download only when allowed. A pipeline repo keeps the
    # checker in safety_checker/ and its processor in feature_extractor/.
    for local_only in (True,) if offline else (True, False):
        for subfolder, processor_subfolder in ((None, None), ("safety_checker", "feature_extractor")):
            kwargs: dict[str, Any] = {"local_files_only": local_only}
            try:
                model = checker_cls.from_pretrained(spec, **kwargs, **({"subfolder": subfolder} if subfolder else {}))
            except Exception as exc:
                where = "local cache" if local_only else "hub download"
                first_line = (str(exc).strip().splitlines() or [""])[0]
                errors.append(f"{where}{f' ({subfolder}/)' if subfolder else ''}: {type(exc).__name__}: {first_line}")
                if not local_only and "connect" in first_line.lower():
                    break  # no network: trying the other layout would only wait for the same timeouts
                continue
            try:
                processor = processor_cls.from_pretrained(
                    spec, **kwargs, **({"subfolder": processor_subfolder} if processor_subfolder else {}))
            except Exception:
                log.warning("no image processor found with the safety checker %s; using CLIP defaults", spec)
                processor = processor_cls()
            return _finish(model, processor, device)
    note = " Offline mode (HF_HUB_OFFLINE) is on, so nothing was downloaded." if offline else ""
    tried = "\n".join(f"  - {line}" for line in errors)
    raise SafetyCheckerLoadError(
        f"generation.safety_checker = {spec!r}: cannot be loaded from the hub cache or the hub.{note}\n{tried}\n"
        "Download it once (huggingface-cli download CompVis/stable-diffusion-safety-checker) or point the key at a "
        "local folder; remove the key to run without a checker."
    )


def _finish(model: Any, processor: Any, device: str) -> OutputChecker:
    model = model.to(device)
    model.eval()
    return DiffusersSafetyChecker(model, processor, device)
