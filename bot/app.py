"""The composition root: the one place that builds settings, database, filter, limiter, model, worker and bot.

Everything else receives what it needs from here (the cogs through ``bot.services``), so tests and the
playground run the *real* bot in-process with :func:`start_bot` and only change the config (a temporary
database, ``model: tiny``, the local Discord-compatible server's URLs).

Slow or blocking start-up work stays off the event loop: migrations and the model load run in threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import ConfigError, Settings, load_settings
from bot.logging_setup import setup_logging

if TYPE_CHECKING:
    from bot.client import ImagineBot, ShardedImagineBot
    from bot.contests.service import ContestService
    from bot.journal import JobJournal
    from bot.moderation.filter import ContentFilter
    from bot.moderation.safety import OutputChecker
    from bot.ratelimit import RateLimiter
    from bot.storage.db import Database
    from generation.loading import LoadedModel
    from generation.worker import GenerationWorker

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
SHUTDOWN_DELIVERY_TIMEOUT = 30.0

NO_TOKEN_HELP = """\
No Discord bot token is configured, so the bot cannot log in to Discord.

To run it on Discord:
  1. Open https://discord.com/developers/applications and click "New Application".
  2. In "Bot", click "Reset Token" and copy the token (keep it secret).
  3. Either put it in config.yaml (discord.token) or set it in the environment:
       export DISCORD_TOKEN=your-token
  4. In "OAuth2" -> "URL Generator", tick the scopes "bot" and "applications.commands" and the permissions
     "Send Messages", "Attach Files", "Embed Links", "Add Reactions", "Read Message History" (and
     "Manage Messages" so a 🔄 reaction can be taken off after a rerun); open the URL to invite the bot.
  5. Run `imagine-bot run` again.

Starting the local playground instead: a Discord-like web page on this machine, no Discord account needed.
"""


@dataclass
class Services:
    """What the bot runs on; built once by :func:`build_services`, handed to the bot and its cogs."""

    settings: Settings
    db: Database
    model: LoadedModel | Any
    engine: Any
    worker: GenerationWorker
    journal: JobJournal
    content_filter: ContentFilter
    rate_limiter: RateLimiter
    safety_checker: OutputChecker | None = None
    images_dir: Path = field(default_factory=lambda: Path("data/images"))
    contests: ContestService | None = None
    _stopped: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)

    async def stop_work(self) -> None:
        """Stop taking jobs (queued ones stay journalled for the next start); finish and deliver the running batch.

        Call it while the bot is still connected, so that last batch can be posted.
        """
        if self._stopped:
            return
        self._stopped = True
        await self.journal.close()
        await self.worker.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.journal.wait_idle(), SHUTDOWN_DELIVERY_TIMEOUT)

    async def close(self) -> None:
        """:meth:`stop_work`, then close the database. Idempotent."""
        if self._closed:
            return
        await self.stop_work()
        self._closed = True
        await self.db.close()


async def build_services(settings: Settings, *, model: Any = None, engine: Any = None,
                         clock: Any = None) -> Services:
    """Build everything the bot needs from ``settings``.

    ``model`` (a :class:`LoadedModel`) and ``engine`` (any ``BatchEngine``) may be passed in by tests and the
    playground to reuse a loaded pipeline or use a fake; by default the configured model is loaded in a thread.
    Raises :class:`generation.loading.ModelLoadError` (with a message for the admin) when it cannot be loaded.
    ``clock`` (a :class:`bot.contests.clock.Clock`) lets tests drive contest deadlines; default: real time.
    """
    from bot.journal import JobJournal
    from bot.moderation.filter import ContentFilter
    from bot.moderation.safety import load_safety_checker
    from bot.ratelimit import RateLimiter
    from bot.storage.db import Database, upgrade_to_head
    from bot.storage.images import sweep_orphans
    from generation.worker import GenerationWorker

    content_filter = ContentFilter(settings.content_filter.blocked_terms, settings.content_filter.regex_rules)
    if settings.database.auto_upgrade:
        await upgrade_to_head(settings.database.url)  # runs Alembic in a thread
    db = Database.connect(settings.database.url)
    worker: GenerationWorker | None = None
    try:
        images_dir = Path(settings.storage.images_dir)
        await asyncio.to_thread(images_dir.mkdir, parents=True, exist_ok=True)
        report = await sweep_orphans(db, images_dir)
        log.info("image store checked: %s", report)

        if engine is None:
            from generation.engine import DiffusionEngine
            from generation.loading import load_pipeline

            if model is None:
                model = await asyncio.to_thread(load_pipeline, settings.generation)
            engine = await asyncio.to_thread(DiffusionEngine, model, settings.generation)
        model_name = getattr(model, "name", None) or getattr(engine, "model_name", "unknown")
        if getattr(model, "is_fallback", False):
            log.warning("model fallback: %s", getattr(model, "banner", ""))
        log.info("model ready", extra={"model": model_name, "device": str(getattr(model, "device", "?"))})

        safety_checker = None
        if settings.generation.safety_checker:
            device = str(getattr(model, "device", "cpu"))
            safety_checker = await asyncio.to_thread(load_safety_checker, settings.generation.safety_checker, device)

        gen = settings.generation
        worker = GenerationWorker(engine, queue_size=gen.queue_size, max_batch_size=gen.max_batch_size,
                                  previews=gen.previews)
        await worker.start()
        journal = JobJournal(db, worker, images_dir, model_name)
        rate_limiter = RateLimiter(db, settings.rate_limits)
        log.info("content filter: %d global term(s), %d rule(s)", content_filter.term_count, content_filter.rule_count)
        from bot.contests.service import build_contest_service

        contests = build_contest_service(db, content_filter=content_filter, images_dir=images_dir, clock=clock)
        return Services(settings=settings, db=db, model=model, engine=engine, worker=worker, journal=journal,
                        content_filter=content_filter, rate_limiter=rate_limiter, safety_checker=safety_checker,
                        images_dir=images_dir, contests=contests)
    except BaseException:
        if worker is not None:
            await worker.close()
        await db.close()
        raise


@dataclass
class RunningBot:
    """A logged-in, ready bot and its services, running in this event loop (see :func:`start_bot`)."""

    bot: ImagineBot | ShardedImagineBot
    services: Services
    task: asyncio.Task[None]
    owns_services: bool = True

    @property
    def application_id(self) -> int | None:
        return self.bot.application_id

    @property
    def user_id(self) -> int | None:
        return self.bot.user.id if self.bot.user else None

    async def close(self, *, close_services: bool | None = None) -> None:
        """Orderly stop: finish and deliver the running batch, disconnect, then close the services.

        ``close_services`` defaults to whether :func:`start_bot` built them; queued jobs stay journalled and
        are recovered by the next start.
        """
        close_services = self.owns_services if close_services is None else close_services
        if close_services:
            await self.services.stop_work()  # before the bot closes, so the running batch is still delivered
        await self.bot.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        if close_services:
            await self.services.close()

    async def wait_closed(self) -> None:
        """Until the gateway connection ends for good (an error is re-raised)."""
        await self.task


async def start_bot(settings: Settings, *, services: Services | None = None,
                    ready_timeout: float = READY_TIMEOUT) -> RunningBot:
    """Build the services (unless given), log in, connect, and return once the bot is ready.

    Points discord.py at ``settings.discord.api_base_url``/``gateway_url`` first, so this runs the real bot
    against the local Discord-compatible server as well as against Discord. Raises
    ``discord.LoginFailure`` for a bad token, ``TimeoutError`` if READY does not come in time.
    """
    from bot.client import create_bot
    from bot.discord_endpoints import configure_endpoints

    token = settings.token
    if not token:
        raise ValueError("settings.discord.token is required to start the bot")
    configure_endpoints(settings.discord.api_base_url, settings.discord.gateway_url)
    owns = services is None
    if services is None:
        services = await build_services(settings)
    bot = create_bot(services)
    try:
        await bot.login(token)  # runs setup_hook: cogs, buttons, command sync, journal recovery
        task = asyncio.create_task(bot.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(bot.wait_until_ready(), name="discord-ready")
        done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()  # re-raises why the connection ended
                raise ConnectionError("the gateway connection closed before READY")
            task.cancel()
            raise TimeoutError(f"the bot was not ready within {ready_timeout:.0f} s")
    except BaseException:
        await bot.close()
        if owns:
            await services.close()
        raise
    log.info("bot started", extra={"api": settings.discord.api_base_url, "user": bot.user.id if bot.user else None})
    return RunningBot(bot=bot, services=services, task=task, owns_services=owns)


async def run_bot(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM (or the connection ends for good), then shut down in order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows has no add_signal_handler
            loop.add_signal_handler(sig, stop.set)
    try:
        running = await start_bot(settings)
        stopper = asyncio.create_task(stop.wait(), name="wait-for-signal")
        try:
            done, _ = await asyncio.wait({stopper, running.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            log.info("shutting down")
            await running.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    if running.task in done and not running.task.cancelled() and running.task.exception() is not None:
        log.error("the Discord connection ended: %s", running.task.exception())
        return 1
    return 0


def _load(config: str | None, *, default_path: str | None = "config.yaml") -> Settings:
    """Settings from ``config``; the default path may be missing (all defaults, DISCORD_TOKEN still applies)."""
    if config is not None and config == default_path and not Path(config).exists():
        return load_settings(None)
    return load_settings(config)


def _setup_logging(settings: Settings) -> None:
    setup_logging(settings.logging.level, json_lines=settings.logging.json_lines, secrets=[settings.token])


def _start_playground(settings: Settings, port: int | None = None) -> int:
    """Call ``bot.playground.app.run_playground`` (sync or async) lazily: it is optional at import time."""
    try:
        from bot.playground.app import run_playground
    except ImportError as exc:
        print(f"The playground is not available in this install ({exc}).", file=sys.stderr)
        return 2
    if port is not None:
        settings = settings.model_copy(update={"playground": settings.playground.model_copy(update={"port": port})})
    try:
        result = run_playground(settings)
        if inspect.isawaitable(result):
            result = asyncio.run(result)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 0
    return result if isinstance(result, int) else 0


def run_main(args: argparse.Namespace) -> int:
    """``imagine-bot run``: the bot on Discord, or the playground when no token is configured."""
    from bot.moderation.filter import FilterConfigError
    from bot.moderation.safety import SafetyCheckerLoadError
    from generation.loading import ModelLoadError

    try:
        settings = _load(getattr(args, "config", "config.yaml"))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(settings)
    if not settings.token:
        print(NO_TOKEN_HELP, file=sys.stderr)
        return _start_playground(settings)
    try:
        return asyncio.run(run_bot(settings))
    except ModelLoadError as exc:
        print(f"Cannot start: the model could not be loaded.\n{exc}", file=sys.stderr)
        return 2
    except (FilterConfigError, SafetyCheckerLoadError) as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        import discord

        if isinstance(exc, discord.LoginFailure):
            print("Discord refused the bot token (discord.token / DISCORD_TOKEN). Reset it in the developer "
                  "portal (your application -> Bot -> Reset Token) and try again.", file=sys.stderr)
            return 2
        if isinstance(exc, ConfigError):
            print(exc, file=sys.stderr)
            return 2
        raise


def playground_main(args: argparse.Namespace) -> int:
    """``imagine-bot playground``: the local Discord-like server, the bot and its web page."""
    try:
        settings = _load(getattr(args, "config", None), default_path=None)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(settings)
    return _start_playground(settings, getattr(args, "port", None))
