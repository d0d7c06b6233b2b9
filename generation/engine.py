"""The synchronous diffusion engine the worker thread drives: one batched pipeline call per batch.

Reproducibility: every image gets its own ``torch.Generator`` seeded with ``params.seed + i``, and diffusers
draws each image's initial noise (and, for ancestral samplers, its per-step noise; for img2img, its VAE sample of
the starting image) from that image's generator, so the same seed gives the same image alone or inside a batch
of other members' prompts. The only differences are float rounding from batched kernels (measured with ``tiny``
on CPU: at most a few 1/255 steps per pixel; see tests/generation/test_engine.py).

Kinds of batch (part of the batch key, so they never share a call): text-to-image; img2img (``params.strength``
set: variations, uploads, and upscales by "hires fix": the starting image is resized to the output size, then
denoised at a low strength with the same prompt and seed); and, when ``generation.upscaler`` names a diffusers
upscaler, upscales run through that model instead.

Thread safety: each call builds its own pipeline object around the loaded modules (``_derived``) with a fresh
scheduler, so no scheduler state or per-call pipeline attribute is shared between calls or threads; the heavy
modules (UNet, VAE, text encoder) are shared, read-only during a call, and one call runs at a time (the lock) —
LoRA adapters are switched on those shared modules between calls.
"""

from __future__ import annotations

import gc
import inspect
import io
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from generation.errors import JobRefusedError
from generation.loading import LoadedModel, LoadedUpscaler, ModelLoadError, load_upscaler
from generation.models import ModelRegistry
from generation.png import upright_rgb
from generation.request import GenerationRequest, ImageParams
from generation.schedulers import make_scheduler
from generation.settings import GenerationSettings
from generation.tokenizer import is_truncated

log = logging.getLogger(__name__)

# Several named LoRA adapters in one UNet is diffusers' documented multi-adapter use (load_lora_weights with an
# adapter_name, then set_adapters); peft warns about it on the second one, which would only alarm an admin.
warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model", category=UserWarning)

# A1111's "Approx cheap" preview: a linear map from SD 1.x's 4 latent channels to RGB (rows: channels).
LATENT_RGB_FACTORS = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])
UPSCALER_RETRY_SECONDS = 60.0

OnStep = Callable[[int, int, torch.Tensor], None]


class GenerationInterrupted(Exception):
    """Raised inside the pipeline when ``should_stop()`` turned true; the partial batch is thrown away.

    An exception rather than diffusers' ``interrupt`` flag: with the flag the pipeline skips the remaining steps
    but still VAE-decodes (and safety-checks) the unfinished latents of the whole batch, which is the most
    memory-hungry part of a call and, on a CPU, seconds of work for images nobody will see.
    """


def _derived(base: DiffusionPipeline, cls: type[DiffusionPipeline], scheduler: Any) -> DiffusionPipeline:
    """A new ``cls`` pipeline around ``base``'s modules (no copy of any weight) with its own ``scheduler``.

    This is what ``cls.from_pipe(base, scheduler=...)`` does, minus two things that make ``from_pipe`` unfit per
    call: it ends with ``.to(dtype)`` on the *shared* modules (fp32 unless ``torch_dtype`` is passed, so an fp16
    model would be cast in place), logging a warning per module each time. The model-offload hooks are carried
    over so ``enable_model_cpu_offload`` keeps working for the new object.
    """
    extra = {}
    if "requires_safety_checker" in inspect.signature(cls.__init__).parameters:
        extra["requires_safety_checker"] = False  # only silences a warning; a configured checker still runs
    pipe = cls(**{**base.components, "scheduler": scheduler}, **extra)
    for attr in ("_all_hooks", "_offload_device", "_offload_gpu_id"):
        if hasattr(base, attr):
            setattr(pipe, attr, getattr(base, attr))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fresh_scheduler(scheduler: Any) -> Any:
    return type(scheduler).from_config(scheduler.config)


def _counted_steps(total: int, on_step: OnStep | None,
                   should_stop: Callable[[], bool] | None) -> Callable[[Any, int, Any, dict[str, Any]], dict]:
    """``callback_on_step_end`` that reports steps as diffusers' progress bar counts them: a second-order sampler
    (Heun) calls the UNet twice per step and PNDM once more at the start, but a step is counted only when
    ``(i + 1) % scheduler.order == 0`` past the warm-up (or at the last call), so N steps report 1..N of N."""
    counted = 0

    def step_end(pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        nonlocal counted
        if should_stop is not None and should_stop():
            raise GenerationInterrupted("stopped by request")
        order = pipe.scheduler.order
        calls = pipe.num_timesteps
        warmup = calls - total * order
        if index == calls - 1 or (index + 1 > warmup and (index + 1) % order == 0):
            counted += 1
            if on_step is not None:
                on_step(counted, total, kwargs["latents"])
        return kwargs

    return step_end


class DiffusionEngine:
    """Runs :class:`GenerationRequest` batches on the configured models (see the module docstring for why)."""

    def __init__(self, models: ModelRegistry | LoadedModel, settings: GenerationSettings) -> None:
        """``models``: the registry, or one loaded model that becomes the registry's preloaded default."""
        self.settings = settings
        self.models = models if isinstance(models, ModelRegistry) else ModelRegistry(settings, preloaded=models)
        self._lock = threading.Lock()  # the modules are shared: one pipeline call at a time
        self._upscaler: LoadedUpscaler | None = None
        self._upscaler_failed: tuple[float, ModelLoadError] | None = None

    @property
    def model_name(self) -> str:
        """The default model's name."""
        return self.models.default_name

    @property
    def device(self) -> torch.device:
        return self.models.device

    def model_label(self, params: ImageParams) -> str:
        """The name written into PNGs: the loaded model's (``tiny`` when the default fell back to it)."""
        loaded = self.models.peek(params.model)
        return loaded.name if loaded is not None else self.models.resolve(params.model)

    def _kind(self, params: ImageParams) -> str:
        if params.strength is None:
            return "txt2img"
        if params.upscale is not None and self.settings.upscaler:
            return "upscaler"
        return "img2img"

    def batch_key(self, request: GenerationRequest) -> tuple:
        """Requests with equal keys run in one call: everything the pipeline takes as a single value."""
        params = request.params
        return (self.models.resolve(params.model), self._kind(params), params.width, params.height, params.steps,
                params.scheduler, float(params.guidance), params.strength, params.loras)

    def _generator_device(self) -> str:
        # CUDA generators keep the noise on the GPU; MPS noise is drawn on the CPU (diffusers' advice).
        device = self.device
        return str(device) if device.type == "cuda" else "cpu"

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: OnStep | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Image.Image]]:
        """One pipeline call for all *requests* (equal :meth:`batch_key`); ``params.count`` images each.

        ``on_step(step, total, latents)`` runs after every denoising step (1-based, ``total`` =
        ``params.denoising_steps``); ``should_stop()`` is checked at the same point and stops the call with
        :class:`GenerationInterrupted`. Raises :class:`JobRefusedError` when the batch's model, LoRAs, upscaler or
        starting images cannot be used.
        """
        if not requests:
            return []
        keys = {self.batch_key(r) for r in requests}
        if len(keys) != 1:
            raise ValueError(f"requests in one batch must share a batch key, got {sorted(map(str, keys))}")
        first = requests[0].params
        kind = self._kind(first)
        prompts = [r.params.prompt for r in requests for _ in range(r.params.count)]
        negatives = [r.params.negative_prompt or "" for r in requests for _ in range(r.params.count)]
        with self._lock:
            generators = [torch.Generator(self._generator_device()).manual_seed(r.params.seed + i)
                          for r in requests for i in range(r.params.count)]
            common: dict[str, Any] = {
                "prompt": prompts,
                "negative_prompt": negatives if first.guidance > 1 else None,
                "guidance_scale": first.guidance,
                "generator": generators,
                "output_type": "pil",
            }
            if kind == "upscaler":
                images = self._upscale(requests, common, on_step, should_stop)
            else:
                loaded = self._model(first.model)
                self._activate_loras(loaded, first.loras)
                cls: type[DiffusionPipeline] = StableDiffusionPipeline
                if kind == "img2img":
                    cls = StableDiffusionImg2ImgPipeline
                    common["image"] = self._start_images(requests, (first.width, first.height))
                    common["strength"] = first.strength
                else:
                    common.update(width=first.width, height=first.height)
                scheduler = make_scheduler(first.scheduler, loaded.pipeline.scheduler.config)
                pipe = _derived(loaded.pipeline, cls, scheduler)
                with torch.inference_mode():
                    output = pipe(**common, num_inference_steps=first.steps,
                                  callback_on_step_end=_counted_steps(first.denoising_steps, on_step, should_stop),
                                  callback_on_step_end_tensor_inputs=["latents"])
                images = list(output.images)
        bounds = list(itertools.accumulate((r.params.count for r in requests), initial=0))
        return [images[start:end] for start, end in itertools.pairwise(bounds)]

    # --- models, LoRAs, images (called with the lock held) ----------------------------------------------------

    def _model(self, name: str) -> LoadedModel:
        try:
            return self.models.get(name)
        except ModelLoadError:
            name = self.models.resolve(name)
            if name not in self.models.sources:
                raise JobRefusedError(f"The model '{name}' is not available on this bot any more; choose one of: "
                                      f"{', '.join(self.models.names)}.") from None
            raise JobRefusedError(f"The model '{name}' could not be loaded, so this job was not run; the error was "
                                  "logged for the bot's admin. Please choose another model.") from None

    def _activate_loras(self, loaded: LoadedModel, loras: tuple[tuple[str, float], ...]) -> None:
        """Load missing adapters into this model once, then switch the active set (and weights) for this batch."""
        pipe = loaded.pipeline
        if not loras:
            if loaded.adapters:
                pipe.disable_lora()
            return
        paths = self.settings.lora_paths()
        for name, _weight in loras:
            path = paths.get(name)
            if path is None:
                raise JobRefusedError(f"The LoRA '{name}' of this style is no longer configured; choose the style "
                                      "again or another one.")
            if loaded.adapters.get(name) == path:
                continue
            if name in loaded.adapters:  # the same name now points at another file
                pipe.delete_adapters([name])
                del loaded.adapters[name]
            try:
                pipe.load_lora_weights(path, adapter_name=name)
            except Exception:
                log.exception("LoRA %s (%s) could not be loaded into model %s", name, path, loaded.name)
                raise JobRefusedError(f"The style's LoRA '{name}' could not be loaded, so this job was not run; the "
                                      "error was logged for the bot's admin.") from None
            loaded.adapters[name] = path
        pipe.enable_lora()
        pipe.set_adapters([name for name, _ in loras], [weight for _, weight in loras])

    @staticmethod
    def _start_image(request: GenerationRequest, size: tuple[int, int]) -> Image.Image:
        """The request's starting image as RGB at ``size`` (its first frame; transparency over white)."""
        if request.init_image is None:
            raise JobRefusedError("This job needs its starting image, which is no longer available; "
                                  "please start it again.")
        try:
            with Image.open(io.BytesIO(request.init_image)) as opened:
                image = upright_rgb(opened)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise JobRefusedError("The starting image could not be read; send a PNG, JPEG or WebP file.") from None
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image

    def _start_images(self, requests: Sequence[GenerationRequest], size: tuple[int, int]) -> list[Image.Image]:
        """One starting image per output image (a request with count N repeats its image N times)."""
        images = []
        for request in requests:
            image = self._start_image(request, size)
            images += [image] * request.params.count
        return images

    def _upscaler_model(self) -> LoadedUpscaler:
        if self._upscaler is not None:
            return self._upscaler
        failed = self._upscaler_failed
        if failed is None or time.monotonic() - failed[0] >= UPSCALER_RETRY_SECONDS:
            try:
                self._upscaler = load_upscaler(str(self.settings.upscaler), self.settings)
                self._upscaler_failed = None
                return self._upscaler
            except ModelLoadError as exc:
                log.error("the upscaler could not be loaded: %s", exc)
                self._upscaler_failed = (time.monotonic(), exc)
        raise JobRefusedError("Upscaling is not available right now (the upscaler model could not be loaded); "
                              "the error was logged for the bot's admin.")

    def _upscale(self, requests: Sequence[GenerationRequest], common: dict[str, Any], on_step: OnStep | None,
                 should_stop: Callable[[], bool] | None) -> list[Image.Image]:
        """Upscales through ``generation.upscaler``: the image at output/scale, the model makes it output-sized.

        Its own scheduler and noise schedule are used (the samplers of ``generation.default_scheduler`` are tuned
        for the base model); ``params.denoising_steps`` steps are run, the same count hires fix would run.
        """
        first = requests[0].params
        upscaler = self._upscaler_model()
        size = (first.width // upscaler.scale, first.height // upscaler.scale)
        images = self._start_images(requests, size)
        pipe = _derived(upscaler.pipeline, type(upscaler.pipeline), _fresh_scheduler(upscaler.pipeline.scheduler))
        total = first.denoising_steps
        counted = 0

        def callback(_index: int, _timestep: Any, latents: torch.Tensor) -> None:
            # these pipelines take only the legacy callback, called on the steps diffusers counts
            nonlocal counted
            if should_stop is not None and should_stop():
                raise GenerationInterrupted("stopped by request")
            counted += 1
            if on_step is not None:
                on_step(counted, total, latents)

        with torch.inference_mode():
            output = pipe(**common, image=images, num_inference_steps=total, callback=callback, callback_steps=1)
        return [image if image.size == (first.width, first.height)
                else image.resize((first.width, first.height), Image.Resampling.LANCZOS) for image in output.images]

    # --- the rest of the BatchEngine protocol --------------------------------------------------------------------

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

    def tokens_truncated(self, params: ImageParams) -> bool:
        """True when the prompt is longer than the text encoder's 77 tokens (the rest is ignored)."""
        loaded = self.models.peek(params.model) or self.models.peek("")
        return loaded is not None and is_truncated(loaded.pipeline.tokenizer, params.prompt)

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
