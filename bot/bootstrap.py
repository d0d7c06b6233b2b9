"""The composition root: the one place that builds database, filter, limiter, model, worker, journal and bot.

Only entry points (``bot.cli``, the playground) import it; everything else receives what it needs as a
:class:`~bot.services.Services` (the cogs through ``bot.services``), so tests and the playground run the *real*
bot in-process with :func:`start_bot` and only change the config (a temporary database, ``model: tiny``, the
local Discord-compatible server's URLs).

Slow or blocking start-up work stays off the event loop: migrations and the model load run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.clock import Clock
from bot.config import Settings
from bot.contests.service import ContestService
from bot.discord.client import ImagineBot, ShardedImagineBot, create_bot
from bot.discord.endpoints import configure_endpoints
from bot.gate.content_filter import ContentFilter
from bot.gate.rate_limits import RateLimiter
from bot.journal.job_journal import JobJournal
from bot.services import ModelInfo, Services
from bot.storage.db import Database, upgrade_to_head
from bot.storage.images import sweep_orphans
from bot.storage.preflight import check_storage
from generation.engine import DiffusionEngine
from generation.loading import LoadedModel, load_pipeline
from generation.safety import load_safety_checker
from generation.worker import GenerationWorker

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0

def model_info(model: LoadedModel | None, engine: Any) -> ModelInfo:
    """What the bot may know of the model: a loaded pipeline's description, or an injected engine's name."""
    if model is None:
        return ModelInfo(name=engine.model_name)
    return ModelInfo(name=model.name, device=str(model.device), is_fallback=model.is_fallback, banner=model.banner)


async def build_services(settings: Settings, *, model: LoadedModel | None = None, engine: Any = None,
                         clock: Clock | None = None) -> Services:
    """Build everything the bot needs from ``settings``.

    ``model`` (a :class:`LoadedModel`) and ``engine`` (any ``BatchEngine``) may be passed in by tests and the
    playground to reuse a loaded pipeline or use a fake; by default the configured model is loaded in a thread.
    Raises :class:`generation.loading.ModelLoadError` (with a message for the admin) when it cannot be loaded,
    and :class:`bot.storage.preflight.StorageError` (a ConfigError) when the database or images folder cannot be
    used; both before anything else is built.
    ``clock`` (a :class:`bot.clock.Clock`) lets tests drive contest deadlines; default: real time.
    """
    content_filter = ContentFilter.from_settings(settings.content_filter)
    await asyncio.to_thread(check_storage, settings)  # creates the database file and images folder, private
    if settings.database.auto_upgrade:
        await upgrade_to_head(settings.database.url)  # runs Alembic in a thread
    db = Database.connect(settings.database.url)
    worker: GenerationWorker | None = None
    try:
        images_dir = Path(settings.storage.images_dir)
        report = await sweep_orphans(db, images_dir)
        log.info("image store checked: %d stray file(s) removed, %d missing file(s) marked",
                 len(report.orphan_files_removed), len(report.rows_marked_missing))

        if engine is None:
            if model is None:
                model = await asyncio.to_thread(load_pipeline, settings.generation)
            engine = await asyncio.to_thread(DiffusionEngine, model, settings.generation)
        info = model_info(model, engine)
        if info.is_fallback:
            log.warning("model fallback: %s", info.banner)
        log.info("model ready", extra={"model": info.name, "device": info.device})

        safety_checker = None
        if settings.generation.safety_checker:
            safety_checker = await asyncio.to_thread(load_safety_checker, settings.generation.safety_checker,
                                                     info.device)

        gen = settings.generation
        worker = GenerationWorker(engine, queue_size=gen.queue_size, max_batch_size=gen.max_batch_size,
                                  previews=gen.previews)
        await worker.start()
        journal = JobJournal(db, worker, images_dir, info.name)
        rate_limiter = RateLimiter(db, settings.rate_limits, queue_size=gen.queue_size)
        log.info("content filter: %d global term(s), %d rule(s)", content_filter.term_count, content_filter.rule_count)
        contests = ContestService(db, clock=clock, content_filter=content_filter, images_dir=images_dir)
        return Services(settings=settings, db=db, model=info, engine=engine, worker=worker, journal=journal,
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


