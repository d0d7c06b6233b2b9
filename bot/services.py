"""What the bot runs on, as one typed value: built by :mod:`bot.bootstrap`, read by the client and its cogs.

It lives in a leaf module (it imports only types) so that the cogs, delivery and the gate can name it without
importing the composition root, which only entry points may import.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.gate.submission import Gate

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.contests.service import ContestService
    from bot.gate.content_filter import ContentFilter
    from bot.gate.rate_limits import RateLimiter
    from bot.journal.job_journal import JobJournal
    from bot.storage.db import Database
    from generation.safety import OutputChecker
    from generation.worker import GenerationWorker

SHUTDOWN_DELIVERY_TIMEOUT = 30.0


@dataclass(frozen=True)
class ModelInfo:
    """What the bot tells people about the loaded model (no pipeline object: the bot never touches it)."""

    name: str
    device: str = "cpu"
    is_fallback: bool = False
    banner: str | None = None


@dataclass
class Services:
    """Everything the bot needs, built once; handed to the bot and its cogs."""

    settings: Settings
    db: Database
    model: ModelInfo
    worker: GenerationWorker
    journal: JobJournal
    content_filter: ContentFilter
    rate_limiter: RateLimiter
    contests: ContestService
    safety_checker: OutputChecker | None = None
    images_dir: Path = field(default_factory=lambda: Path("data/images"))
    engine: Any = None  # the BatchEngine the worker drives (kept so the playground can reuse a loaded pipeline)
    _stopped: bool = field(default=False, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def gate(self) -> Gate:
        """The gate every new job passes (/imagine, Rerun, 🔄), over these services' parts."""
        return Gate(self.settings.generation, self.db, self.content_filter, self.rate_limiter, self.journal)

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
