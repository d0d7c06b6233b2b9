"""The synchronous diffusion engine the worker thread drives: one batched pipeline call per batch.

Reproducibility: every image gets its own ``torch.Generator`` seeded with ``request.seed + i``, and diffusers
draws each image's initial noise (and, for ancestral samplers, its per-step noise) from that image's generator,
so the same seed gives the same image alone or inside a batch of other members' prompts. The only differences
are float rounding from batched kernels (measured with ``tiny`` on CPU: at most a few 1/255 steps per pixel;
see tests/generation/test_engine.py).

Thread safety: each call builds a fresh scheduler (``make_scheduler``) and a shallow copy of the pipeline that
points at it, so no scheduler state or per-call pipeline attribute is shared between calls or threads; the
heavy modules (UNet, VAE, text encoder) are shared read-only.
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from generation.loading import LoadedModel
from generation.request import GenerationRequest
from generation.schedulers import make_scheduler
from generation.settings import GenerationSettings
from generation.tokenizer import is_truncated

log = logging.getLogger(__name__)

# A1111's "Approx cheap" preview: a linear map from SD 1.x's 4 latent channels to RGB (rows: channels).
LATENT_RGB_FACTORS = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])

OnStep = Callable[[int, int, torch.Tensor], None]


class GenerationInterrupted(Exception):
    """Raised inside the pipeline when ``should_stop()`` turned true; the partial batch is thrown away."""


class DiffusionEngine:
    """Runs :class:`GenerationRequest` batches on a loaded pipeline (see the module docstring for why)."""

    def __init__(self, loaded: LoadedModel, settings: GenerationSettings) -> None:
        self.loaded = loaded
        self.settings = settings
        self.pipeline = loaded.pipeline
        self._scheduler_config = dict(loaded.pipeline.scheduler.config)
        self._lock = threading.Lock()  # the modules are shared: one pipeline call at a time

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def batch_key(self, request: GenerationRequest) -> tuple:
        """Requests with equal keys run in one call: everything the pipeline takes as a single value."""
        model = getattr(request, "model", "") or self.model_name
        return (model, request.width, request.height, request.steps, request.scheduler, float(request.guidance))

    def _generator_device(self) -> str:
        # CUDA generators keep the noise on the GPU; MPS noise is drawn on the CPU (diffusers' advice).
        return str(self.device) if self.device.type == "cuda" else "cpu"

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: OnStep | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Image.Image]]:
        """One pipeline call for all *requests* (equal :meth:`batch_key`); ``request.count`` images each.

        ``on_step(step, total, latents)`` runs after every denoising step (1-based); ``should_stop()`` is
        checked at the same point and stops the call with :class:`GenerationInterrupted`.
        """
        if not requests:
            return []
        keys = {self.batch_key(r) for r in requests}
        if len(keys) != 1:
            raise ValueError(f"requests in one batch must share a batch key, got {sorted(map(str, keys))}")
        first = requests[0]
        prompts = [r.prompt for r in requests for _ in range(r.count)]
        negatives = [r.negative_prompt or "" for r in requests for _ in range(r.count)]
        seeds = [r.seed + i for r in requests for i in range(r.count)]
        generators = [torch.Generator(self._generator_device()).manual_seed(s) for s in seeds]

        def step_end(pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if should_stop is not None and should_stop():
                raise GenerationInterrupted("stopped by request")
            if on_step is not None:
                on_step(index + 1, pipe.num_timesteps, kwargs["latents"])
            return kwargs

        with self._lock:
            pipe = copy.copy(self.pipeline)  # shallow: shares the modules, owns its scheduler and call state
            object.__setattr__(pipe, "scheduler", make_scheduler(first.scheduler, self._scheduler_config))
            with torch.inference_mode():
                output = pipe(
                    prompt=prompts,
                    negative_prompt=negatives if first.guidance > 1 else None,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    width=first.width,
                    height=first.height,
                    generator=generators,
                    output_type="pil",
                    callback_on_step_end=step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
        images = list(output.images)
        bounds = list(itertools.accumulate((r.count for r in requests), initial=0))
        return [images[start:end] for start, end in itertools.pairwise(bounds)]

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """True for CUDA/MPS allocation failures (the worker then halves the batch and retries)."""
        oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
        if oom_type is not None and isinstance(exc, oom_type):
            return True
        return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()

    def free_memory(self) -> None:
        """Drop dead tensors and hand cached GPU blocks back, e.g. after an out-of-memory error."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if self.device.type == "mps" and mps is not None:
            mps.empty_cache()

    def tokens_truncated(self, prompt: str) -> bool:
        """True when the prompt is longer than the text encoder's 77 tokens (the rest is ignored)."""
        return is_truncated(self.pipeline.tokenizer, prompt)

    def preview(self, latents: torch.Tensor, max_side: int = 128) -> list[Image.Image]:
        """Cheap previews of in-progress latents: a linear latent->RGB map, no VAE (one small PIL image each)."""
        with torch.no_grad():
            lat = latents.detach().to("cpu", torch.float32)
            rgb = torch.einsum("nchw,cr->nrhw", lat, LATENT_RGB_FACTORS)
            rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        previews = []
        for array in rgb:
            image = Image.fromarray(array, mode="RGB")
            scale = max_side / max(image.size)
            if scale < 1:
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            previews.append(image)
        return previews
