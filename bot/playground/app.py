"""``imagine-bot playground``: the local Discord-compatible server, the REAL bot connected to it, and a web page
that looks like a Discord channel, so the whole bot can be seen working with no Discord account.

The bot is the production one, started by :func:`bot.bootstrap.start_bot`; only its settings differ (the local
server's token and URLs from ``discord.api_base_url`` / ``discord.gateway_url``, no monkeypatching). Two more
playground rules:

* the model: the configured one, or ``tiny`` when it cannot be loaded (``fallback_to_tiny`` is forced), with a
  banner on the page that says so and how to get real weights. With ``tiny``, defaults not set in the config
  are lowered (256x256, few steps) so a CPU answers in seconds.
* the data: the local Discord world lives in memory and is gone at exit, so the jobs and images live in a
  per-run folder (a temporary one by default) instead of the configured database: playground jobs with
  made-up guild and channel ids never mix into the real bot's history, stats or restart recovery.

Rate limits, the content filter and every other setting are the configured ones, so switching members on the
page shows the limits at work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from bot.bootstrap import RunningBot, build_services, start_bot
from bot.config import ConfigError, Settings
from bot.gate.content_filter import FilterConfigError
from bot.localdiscord import LocalDiscordServer
from bot.playground.web import PlaygroundWeb, beyond_loopback_warning, is_loopback
from bot.services import ModelInfo
from generation.loading import LoadedModel, ModelLoadError, load_pipeline
from generation.safety import SafetyCheckerLoadError

log = logging.getLogger(__name__)
T = TypeVar("T")

TINY_DEFAULT_SIZE = 256
TINY_DEFAULT_STEPS = 8
PLAYGROUND_PROGRESS_EDIT_SECONDS = 0.5
REAL_WEIGHTS_HINT = ("For real images, set generation.model in config.yaml to a local diffusers folder or "
                     ".safetensors file, or a Hugging Face hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5 "
                     "on a machine with internet access, and restart (README.md, 'Going live on Discord', step 4).")
TINY_NOTE = "the built-in 'tiny' model makes random patterns, not pictures. " + REAL_WEIGHTS_HINT


class PlaygroundPortError(OSError):
    """The page's address cannot be listened on (port in use, no permission); the message says what to change."""


@dataclass
class Playground:
    """A running playground: the local server, the bot connected to it and the web page (see
    :func:`start_playground`). ``settings`` are the effective ones the bot runs with."""

    settings: Settings
    server: LocalDiscordServer
    running: RunningBot
    web: PlaygroundWeb
    data_dir: Path
    remove_data_dir: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8765/``."""
        return self.web.url

    @property
    def model_info(self) -> dict[str, Any]:
        return model_info(self.running.services.model, self.settings)

    async def close(self) -> None:
        """Orderly stop: the bot first (its running batch is still delivered), then the page and the server.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.running.close(close_services=True)
        finally:
            await self.web.close()
            await self.server.close()
            if self.remove_data_dir:
                await asyncio.to_thread(shutil.rmtree, self.data_dir, True)

    async def __aenter__(self) -> Playground:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def model_info(model: ModelInfo, settings: Settings) -> dict[str, Any]:
    """What the page shows about the model: its name, and a banner when it is the fallback or ``tiny``."""
    name = model.name
    is_fallback = model.is_fallback
    banner = model.banner if is_fallback else None
    if is_fallback and not banner:
        banner = f"Running the built-in 'tiny' test model because {settings.generation.model!r} could not be loaded."
    note = TINY_NOTE if name == "tiny" and not is_fallback else None
    gen = settings.generation
    return {
        "model": name, "configured_model": gen.model, "is_fallback": is_fallback, "banner": banner, "note": note,
        "how_to": REAL_WEIGHTS_HINT if is_fallback else None,
        "device": model.device,
        "defaults": {"steps": gen.default_steps, "max_steps": gen.max_steps, "width": gen.default_width,
                     "height": gen.default_height, "min_size": gen.min_size, "max_size": gen.max_size,
                     "guidance": gen.default_guidance, "scheduler": gen.default_scheduler},
        "limits": {"images_per_window": settings.rate_limits.images_per_window,
                   "window_seconds": settings.rate_limits.window_seconds,
                   "max_queued_per_user": settings.rate_limits.max_queued_per_user},
    }


def tiny_defaults(generation: Any) -> dict[str, Any]:
    """Lighter defaults for ``tiny`` (only for keys the config does not set), so a CPU answers in seconds."""
    configured = generation.model_fields_set
    size = min(max(TINY_DEFAULT_SIZE, generation.min_size), generation.max_size)
    update: dict[str, Any] = {}
    for key in ("default_width", "default_height"):
        if key not in configured:
            update[key] = size
    if "default_steps" not in configured:
        update["default_steps"] = min(TINY_DEFAULT_STEPS, generation.max_steps)
    return update


def playground_settings(settings: Settings, server: LocalDiscordServer, data_dir: Path, *,
                        generation: Any = None, port: int | None = None) -> Settings:
    """The bot's settings in the playground: the local server's token and URLs, commands synced to its guild at
    once, the per-run data folder; everything else as configured."""
    discord_update: dict[str, Any] = {
        "token": SecretStr(server.token), "api_base_url": server.api_base_url, "gateway_url": server.gateway_url,
        "guild_ids": [server.guild.id], "sharded": False, "shard_count": None,
    }
    if "progress_edit_seconds" not in settings.discord.model_fields_set:
        discord_update["progress_edit_seconds"] = PLAYGROUND_PROGRESS_EDIT_SECONDS
    update: dict[str, Any] = {
        "discord": settings.discord.model_copy(update=discord_update),
        "database": settings.database.model_copy(
            update={"url": f"sqlite+aiosqlite:///{(data_dir / 'playground.db').as_posix()}", "auto_upgrade": True}),
        "storage": settings.storage.model_copy(update={"images_dir": data_dir / "images"}),
    }
    if generation is not None:
        update["generation"] = generation
    if port is not None:
        update["playground"] = settings.playground.model_copy(update={"port": port})
    return settings.model_copy(update=update)


async def start_playground(settings: Settings, *, port: int | None = None, host: str | None = None,
                           data_dir: str | Path | None = None, model: LoadedModel | None = None,
                           engine: Any = None) -> Playground:
    """Start the local Discord server, the real bot connected to it, and the page; return once all are ready.

    ``port`` (default ``settings.playground.port``; 0 picks a free one, for tests) and ``host`` (default
    ``settings.playground.host``) are the page's. ``data_dir`` holds the playground's database and images
    (default: a temporary folder removed by :meth:`Playground.close`). ``model`` (a loaded
    :class:`~generation.loading.LoadedModel`) and ``engine`` skip loading, as in :func:`bot.bootstrap.build_services`.
    """
    host = settings.playground.host if host is None else host
    port = settings.playground.port if port is None else port
    remove = data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="imagine-playground-")) if data_dir is None else Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)

    generation = settings.generation.model_copy(update={"fallback_to_tiny": True})
    server = LocalDiscordServer(token=f"playground-{secrets.token_urlsafe(24)}", port=0,
                                attachment_size_limit=settings.discord.attachment_size_limit)
    # The page first: a busy port fails at once (not after a model load), and an early visitor sees "starting".
    web = PlaygroundWeb(server, info=lambda: starting_info(settings))
    services = None
    try:
        await server.start()
        try:
            await web.start(host, port)
        except OSError as exc:
            raise PlaygroundPortError(
                f"Cannot start the playground page on {host}:{port} ({exc.strerror or exc}). Is another playground "
                "running? Choose another port with --port or playground.port in config.yaml.") from exc
        if model is None and engine is None:
            log.info("loading model %r (the playground falls back to 'tiny' if it cannot be loaded)",
                     generation.model)
            model = await in_daemon_thread(load_pipeline, generation)
        if (model.name if model is not None else generation.model) == "tiny":
            generation = generation.model_copy(update=tiny_defaults(generation))
        effective = playground_settings(settings, server, folder, generation=generation)
        effective = effective.model_copy(update={"playground": effective.playground.model_copy(
            update={"host": host, "port": web.port})})
        services = await build_services(effective, model=model, engine=engine)
        running = await start_bot(effective, services=services)
        services = None  # from here on the running bot closes them
        web.info = lambda: model_info(running.services.model, effective)
        web.push_state()  # pages opened while starting get the commands and the model banner
        return Playground(settings=effective, server=server, running=running, web=web, data_dir=folder,
                          remove_data_dir=remove)
    except BaseException:
        if services is not None:
            await services.close()
        await web.close()
        await server.close()
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
        raise


async def in_daemon_thread(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a daemon thread: unlike ``asyncio.to_thread``, a Ctrl-C during a long model download
    does not have to wait for it to finish before the process can exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name=f"playground-{getattr(func, '__name__', 'work')}", daemon=True).start()
    return await future


def starting_info(settings: Settings) -> dict[str, Any]:
    """What the page shows before the bot is ready (the model may take minutes to load)."""
    return {"starting": True, "model": settings.generation.model, "configured_model": settings.generation.model,
            "is_fallback": False, "banner": None, "note": None, "how_to": None, "device": "",
            "defaults": {}, "limits": {}}


def startup_text(playground: Playground) -> str:
    """The lines printed once everything runs: the URL first and unmissable."""
    info = playground.model_info
    notes: list[str] = []
    host = playground.settings.playground.host
    if not is_loopback(host):
        notes.append(f"WARNING: {beyond_loopback_warning(host, playground.settings.playground.port)}")
    if info["is_fallback"]:
        notes.append(f"NOTE: {info['configured_model']!r} could not be loaded, so the built-in 'tiny' test model "
                     f"runs (random-pattern images). {REAL_WEIGHTS_HINT}")
    elif info["model"] == "tiny":
        notes.append(f"NOTE: 'tiny' makes random-pattern images. {REAL_WEIGHTS_HINT}")
    lines = [
        "",
        "=" * 76,
        f"  imagine-bot playground is running:  {playground.url}",
        "",
        "  Open it in a browser: a Discord-like channel with the real bot, no Discord account needed.",
        f"  Model: {info['model']} on {info['device'] or '?'}",
        *(textwrap.fill(note, 74, initial_indent="  ", subsequent_indent="  ") for note in notes),
        "  Press Ctrl-C to stop.",
        "=" * 76,
        "",
    ]
    return "\n".join(lines)


async def serve_playground(settings: Settings) -> int:
    """Run the playground until Ctrl-C / SIGTERM (or the bot's connection ends), then stop in order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    print(f"Starting the imagine-bot playground (model {settings.generation.model!r}; this can take a "
          "minute)...", file=sys.stderr, flush=True)
    starter = asyncio.create_task(start_playground(settings), name="playground-start")
    stopper = asyncio.create_task(stop.wait(), name="playground-stop")
    try:
        await asyncio.wait({starter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not starter.done():  # Ctrl-C while starting
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starter
            print("Playground stopped while starting.", file=sys.stderr, flush=True)
            return 0
        try:
            playground = starter.result()
        except PlaygroundPortError as exc:
            print(exc, file=sys.stderr)
            return 2
        except Exception as exc:
            if not _admin_fixable(exc):
                raise
            print(f"Cannot start the playground: {exc}", file=sys.stderr)
            return 2
        print(startup_text(playground), flush=True)
        waiter = asyncio.create_task(playground.running.wait_closed(), name="playground-bot")
        try:
            await asyncio.wait({stopper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for sig in installed:  # a second Ctrl-C while stopping interrupts for real
                loop.remove_signal_handler(sig)
            installed.clear()
            print("Stopping the playground...", file=sys.stderr, flush=True)
            waiter.cancel()
            await playground.close()
            print("Playground stopped.", file=sys.stderr, flush=True)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            log.error("the bot's connection to the local server ended: %s", waiter.exception())
            return 1
        return 0
    finally:
        stopper.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)


def _admin_fixable(exc: BaseException) -> bool:
    """Errors whose message tells the admin what to change in config.yaml (shown as one line, no traceback)."""
    return isinstance(exc, (ConfigError, FilterConfigError, SafetyCheckerLoadError, ModelLoadError))


def run_playground(settings: Settings) -> int:
    """Entry point used by :mod:`bot.cli` (``imagine-bot playground`` and ``imagine-bot run`` without a token).

    The page's port is ``settings.playground.port`` (``--port`` is applied by the caller). Returns the exit code.
    """
    try:
        return asyncio.run(serve_playground(settings))
    except KeyboardInterrupt:
        return 0
