"""``imagine-bot generate``: one prompt to PNG file(s) from the shell, through the same worker the bot uses.

Going through :class:`~generation.worker.GenerationWorker` (not the pipeline directly) means the CLI exercises
exactly the code path members hit, and is a quick way for an admin to check a model before starting the bot.
Problems an admin can fix (a bad option, a model that does not load, a bad config file) print one line and
exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from generation.request import GenerationRequest, RequestError, validate_request
from generation.settings import GenerationSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger(__name__)


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagine-bot generate",
        description="Generate image(s) from a prompt and write them as PNG files with their parameters embedded.",
    )
    parser.add_argument("prompt", help="what to draw, e.g. \"a tea garden with mist\"")
    parser.add_argument("-o", "--output", default="out.png",
                        help="PNG path (default: %(default)s); with --count N, out-1.png ... out-N.png")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random; printed)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: generation.default_steps)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--width", type=int, default=None, help="multiple of 8")
    parser.add_argument("--height", type=int, default=None, help="multiple of 8")
    parser.add_argument("--count", type=int, default=1, help="images, 1-4 (default: %(default)s)")
    parser.add_argument("--scheduler", default=None, help="euler_a, euler, dpmpp_2m, ddim, ... (or 'Euler a')")
    parser.add_argument("--model", default=None, help="a name from generation.models, or a model source: 'tiny', a "
                        "diffusers folder, a .safetensors file or a hub id")
    parser.add_argument("--style", default=None, help="a name from generation.styles")
    parser.add_argument("--image", default=None, help="PNG/JPEG/WebP file to start from (img2img)")
    parser.add_argument("--strength", type=float, default=None, help="img2img strength, 0.05-1 (how much changes)")
    parser.add_argument("--upscale", type=float, default=None, help="upscale --image by this factor (hires fix)")
    parser.add_argument("--device", default=None, choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--dtype", default=None, choices=["auto", "fp16", "bf16", "fp32"])
    parser.add_argument("--config", default=None, help="config.yaml to read the 'generation' section from")
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    return parser


def load_generation_settings(config: str | None, overrides: dict[str, Any]) -> GenerationSettings:
    """The ``generation`` section of a config file (without importing ``bot``), with CLI overrides applied."""
    import yaml
    from pydantic import ValidationError

    data: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CliError(f"{path}: no such file.") from None
        except OSError as exc:
            raise CliError(f"{path}: cannot be read ({exc.strerror}).") from None
        except yaml.YAMLError as exc:
            raise CliError(f"{path}: not valid YAML ({' '.join(str(exc).split())}).") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise CliError(f"{path}: expected a mapping of sections (generation:, discord:, ...).")
        section = (loaded or {}).get("generation") or {}
        if not isinstance(section, dict):
            raise CliError(f"{path}: 'generation' must be a mapping of keys.")
        data.update(section)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GenerationSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"generation.{'.'.join(str(p) for p in e['loc']) or '(section)'} = {e.get('input')!r}: {e['msg']}"
            for e in exc.errors()
        )
        raise CliError(f"{config or 'settings'}: {problems}") from None


def output_paths(output: Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-1.png`` ... ``out-N.png`` for several."""
    if count == 1:
        return [output]
    suffix = output.suffix or ".png"
    return [output.with_name(f"{output.stem}-{i}{suffix}") for i in range(1, count + 1)]


class _Bar:
    """A tqdm bar on stderr, or a plain ``\\r`` bar when tqdm is missing."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self._stream = stream
        self._enabled = enabled
        self._tqdm: Any = None
        self._shown = False

    def update(self, step: int, total: int) -> None:
        if not self._enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            filled = int(30 * step / max(total, 1))
            self._stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {step}/{total} steps")
            self._stream.flush()
            self._shown = True
            return
        if self._tqdm is None or self._tqdm.total != total:
            if self._tqdm is not None:  # a retried batch restarts its steps
                self._tqdm.close()
            self._tqdm = tqdm(total=total, file=self._stream, unit="step", desc="generating", leave=True)
        self._tqdm.update(step - self._tqdm.n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._shown:
            self._stream.write("\n")


async def _run(request: GenerationRequest, settings: GenerationSettings, show_progress: bool,
               outputs: list[Path]) -> int:
    from generation.engine import DiffusionEngine
    from generation.models import ModelRegistry
    from generation.worker import GenerationError, GenerationWorker

    registry = ModelRegistry(settings)
    # Load before queueing (slow; off the loop so Ctrl-C works): a model that does not load is the admin's error,
    # printed whole, not the member's sentence the worker would give.
    loaded = await asyncio.to_thread(registry.get, request.params.model)
    if loaded.banner:
        print(f"warning: {loaded.banner}", file=sys.stderr)
    engine = DiffusionEngine(registry, settings)
    worker = GenerationWorker(engine, queue_size=1,
                              max_batch_size=max(settings.max_batch_size, request.params.count), previews=False)
    await worker.start()
    bar = _Bar(show_progress, sys.stderr)
    try:
        handle = worker.submit(request)

        async def follow() -> None:
            async for item in handle.progress():
                bar.update(item.step, item.total)

        follower = asyncio.create_task(follow())
        try:
            result = await handle
        except asyncio.CancelledError:  # Ctrl-C: stop the pipeline at its next step rather than finish the image
            handle.cancel()
            raise
        except GenerationError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await asyncio.gather(follower, return_exceptions=True)  # ends with the job
            bar.close()
    finally:
        await worker.close()

    for path, image in zip(outputs, result.images, strict=True):
        path.write_bytes(image.png)
        print(f"{path} (seed {image.seed}, {image.width}x{image.height}, {result.model_name})")
    if result.prompt_truncated:
        print("warning: the prompt is longer than the model's 77 tokens; the end was ignored.", file=sys.stderr)
    print(f"done in {result.elapsed_seconds:.1f}s", file=sys.stderr)
    return EXIT_OK


def _read_image(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read the image {path} ({exc.strerror or exc}).") from None


def _quiet_libraries() -> None:
    """Library chatter (e.g. transformers' torchvision notice) would bury the one line that matters."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - both are dependencies
        return
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()


def generate_main(argv: Sequence[str]) -> int:
    """Entry point of ``imagine-bot generate``; returns the process exit status."""
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse already printed the usage line (or --help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings = load_generation_settings(args.config, {"device": args.device, "dtype": args.dtype})
        model_name = args.model
        if args.model is not None and args.model not in settings.models:  # a source: it becomes the only model
            settings = settings.model_copy(update={"model": args.model, "models": {}, "default_model": None})
            model_name = None
        init_image = _read_image(args.image) if args.image else None
        request = validate_request(settings, prompt=args.prompt, negative_prompt=args.negative, seed=args.seed,
                                   steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                                   count=args.count, scheduler=args.scheduler, model=model_name, style=args.style,
                                   strength=args.strength, upscale=args.upscale, init_image=init_image)
        outputs = output_paths(Path(args.output), request.params.count)
        for path in outputs:
            if not path.parent.is_dir():
                raise CliError(f"cannot write {path}: the folder {path.parent} does not exist.")
    except (CliError, RequestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    _quiet_libraries()
    from generation.loading import ModelLoadError

    try:
        return asyncio.run(_run(request, settings, not args.no_progress, outputs))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot write the image ({exc.strerror or exc}).", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
