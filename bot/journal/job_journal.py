"""The bridge from storage to the generation worker: nothing is queued that is not journalled first.

``accept`` commits the job row and only then submits it, so a crash at any point leaves either no job or a
journalled one that :meth:`JobJournal.recover` queues again at the next start. One follower task per job
records what happens to it (running, done with its images saved file-first, failed, cancelled) and only then
calls the delivery listeners, so a listener that raises cannot lose the job's outcome. Once the listeners are
done the job's interaction token is forgotten: a secret is not kept longer than it is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.clock import utcnow
from bot.storage import repository
from bot.storage.db import Database
from bot.storage.images import read_image, save_image
from bot.storage.records import ImageRecord, JobRecord
from generation.request import GenerationRequest
from generation.worker import GeneratedImage, GenerationError, GenerationResult, JobCancelledError, QueueFullError

if TYPE_CHECKING:
    from generation.worker import GenerationWorker, JobHandle

log = logging.getLogger(__name__)

Outcome = GenerationResult | BaseException
Listener = Callable[[JobRecord, list[ImageRecord], Outcome], Awaitable[None]]

STATUS_POLL_SECONDS = 0.2
SAVE_FAILED_MESSAGE = "The images were made but could not be saved; the error was logged for the bot's admin."
RECOVERY_QUEUE_FULL = "The bot restarted with more unfinished jobs than its queue holds; please ask again."
REDELIVER_WITHIN = timedelta(days=1)  # results saved but never posted are posted at the next start if this recent


def request_of(job: JobRecord) -> GenerationRequest:
    """Rebuild the exact request a journalled job was accepted with (same seed, so the same images)."""
    return GenerationRequest(params=job.params, requester_id=str(job.user_id))


class JobJournal:
    """Journal jobs, feed them to the worker, and record their outcome; see the module docstring."""

    def __init__(self, db: Database, worker: GenerationWorker, images_dir: Path | str, model_name: str) -> None:
        self.db = db
        self.worker = worker
        self.images_dir = Path(images_dir)
        self.model_name = model_name
        self._listeners: list[Listener] = []
        self._handles: dict[int, JobHandle] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancel_requested: set[int] = set()
        self._closing = False

    # --- subscribing -------------------------------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        """``await callback(job, images, result_or_error)`` after each job's outcome is recorded."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def handle_for(self, job_id: int) -> JobHandle | None:
        """The worker's handle of a job still being followed (queued or running), else None."""
        return self._handles.get(job_id)

    # --- accepting and recovering ------------------------------------------------------------------------------

    async def accept(
        self,
        request: GenerationRequest,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        interaction_id: int | None,
        interaction_token: str | None,
        application_id: int | None,
        parent_job_id: int | None = None,
        ledger_entry_id: int | None = None,
    ) -> tuple[JobRecord, JobHandle]:
        """Journal the job (committed), then queue it. QueueFullError: the job is marked refused and re-raised.

        The rate limiter's ledger entry (``ledger_entry_id``) is linked to the job in the same transaction; releasing it
        after a refusal stays the caller's business (``RateLimiter.release``).
        """
        job = await repository.create_job(
            self.db, guild_id=guild_id, channel_id=channel_id, user_id=user_id, interaction_id=interaction_id,
            interaction_token=interaction_token, application_id=application_id, params=request.params,
            parent_job_id=parent_job_id, ledger_entry_id=ledger_entry_id,
        )
        try:
            handle = self.worker.submit(request, job_id=job.worker_job_id)
        except QueueFullError as exc:
            await repository.mark_refused(self.db, job.id, exc.message)
            raise
        except BaseException as exc:
            await repository.mark_failed(self.db, job.id, f"could not be queued: {exc}")
            raise
        self._follow(job, handle)
        return job, handle

    async def recover(self) -> list[tuple[JobRecord, JobHandle]]:
        """Queue again, in their original order, the jobs a crash or restart left queued or running.

        Running ones start over (same seed, so the same images). Jobs beyond the queue's capacity are marked
        refused and their listeners told, so the member hears about it rather than waiting forever.
        """
        recovered: list[tuple[JobRecord, JobHandle]] = []
        for job in await repository.unfinished_jobs(self.db):
            if job.id in self._handles:
                continue
            if job.status == "running":
                job = await repository.requeue(self.db, job.id)
            try:
                handle = self.worker.submit(request_of(job), job_id=job.worker_job_id)
            except QueueFullError as exc:
                log.warning("job %s could not be queued again after a restart: %s", job.id, exc.message)
                refused = await repository.mark_refused(self.db, job.id, RECOVERY_QUEUE_FULL)
                await self._notify(refused, [], QueueFullError(RECOVERY_QUEUE_FULL))
                await repository.clear_interaction_token(self.db, job.id)
                continue
            self._follow(job, handle)
            recovered.append((job, handle))
        if recovered:
            log.info("re-queued %d unfinished job(s) from the journal", len(recovered))
        await self._redeliver_unposted()
        return recovered

    async def _redeliver_unposted(self) -> None:
        """Hand the listeners again the results that were saved but never posted (a crash between the two)."""
        for job in await repository.undelivered_jobs(self.db, finished_after=utcnow() - REDELIVER_WITHIN):
            if job.id in self._tasks:
                continue
            task = asyncio.create_task(self._redeliver(job), name=f"journal-redeliver-{job.id}")
            self._tasks[job.id] = task

            def _done(t: asyncio.Task[None], job_id: int = job.id) -> None:
                self._tasks.pop(job_id, None)
                if not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    log.error("re-delivering job %s failed", job_id, exc_info=(type(exc), exc, exc.__traceback__))

            task.add_done_callback(_done)

    async def _redeliver(self, job: JobRecord) -> None:
        records = await repository.images_for_job(self.db, job.id)
        images: list[GeneratedImage] = []
        for record in records:
            try:
                png = await read_image(self.images_dir, record)
            except OSError:
                log.warning("image %s of job %s is missing; not re-delivered", record.index, job.id)
                continue
            images.append(GeneratedImage(record.index, record.seed, png, record.width, record.height))
        if not images:
            return
        elapsed = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else 0.0
        log.info("re-delivering job %s: its images were saved but never posted", job.id)
        result = GenerationResult(job.worker_job_id, request_of(job), images, job.params.model, elapsed,
                                  job.prompt_truncated)
        await self._notify(job, records, result)
        await repository.clear_interaction_token(self.db, job.id)

    async def cancel(self, job_id: int) -> bool:
        """Cancel a job for its member (recorded as cancelled, unlike jobs stopped by a shutdown).

        A job still waiting is recorded cancelled, and its rate-limit grant given back, before this returns:
        the member may ask again at once. A running one stops at its next step and is recorded by its follower.
        """
        handle = self._handles.get(job_id)
        if handle is not None:
            waiting = handle.status == "queued"
            self._cancel_requested.add(job_id)
            cancelled = handle.cancel()
            if cancelled and waiting:
                await repository.cancel_unstarted(self.db, job_id)
            return cancelled
        job = await repository.get_job(self.db, job_id)
        if job is None or job.status not in ("queued", "running"):
            return False
        if job.status == "queued":
            await repository.cancel_unstarted(self.db, job_id)
        else:
            await repository.mark_cancelled(self.db, job_id)
        return True

    async def wait_idle(self) -> None:
        """Wait until every followed job is recorded and delivered (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        """Call before ``worker.close()``: jobs the worker drops while closing stay queued for recovery."""
        self._closing = True

    # --- following one job -------------------------------------------------------------------------------------

    def _follow(self, job: JobRecord, handle: JobHandle) -> None:
        self._handles[job.id] = handle
        task = asyncio.create_task(self._run_follower(job, handle), name=f"journal-job-{job.id}")
        self._tasks[job.id] = task

        def _done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(job.id, None)
            self._handles.pop(job.id, None)
            self._cancel_requested.discard(job.id)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                log.error("journal follower of job %s failed", job.id, exc_info=(type(exc), exc, exc.__traceback__))

        task.add_done_callback(_done)

    async def _watch_start(self, job_id: int, handle: JobHandle) -> None:
        """Record ``running`` once the worker picks the job (status polled: no progress subscription,
        which would make the worker render previews nobody asked for)."""
        while handle.status == "queued":  # noqa: ASYNC110 - the handle offers no start event
            await asyncio.sleep(STATUS_POLL_SECONDS)
        if handle.status == "running":
            await repository.mark_running(self.db, job_id)

    async def _run_follower(self, job: JobRecord, handle: JobHandle) -> None:
        watcher = asyncio.create_task(self._watch_start(job.id, handle), name=f"journal-start-{job.id}")
        outcome: Outcome
        images: list[ImageRecord] = []
        try:
            outcome = await handle
        except GenerationError as exc:
            outcome = exc
        except Exception as exc:  # not the worker's contract, but the outcome must still be recorded
            log.exception("job %s ended with an unexpected error", job.id)
            outcome = exc
        with contextlib.suppress(Exception):
            await watcher  # ends within one poll: the handle is finished
        if isinstance(outcome, GenerationResult):
            try:
                images = await self._store(job, outcome)
                record = await repository.mark_done(self.db, job.id, prompt_truncated=outcome.prompt_truncated)
            except Exception as exc:
                log.exception("saving the images of job %s failed", job.id)
                outcome = exc
                record = await repository.mark_failed(self.db, job.id, SAVE_FAILED_MESSAGE)
        elif isinstance(outcome, JobCancelledError):
            if self._closing and job.id not in self._cancel_requested:
                return  # stopped by a shutdown, not by the member: stays queued, recovered at the next start
            record = await repository.mark_cancelled(self.db, job.id)
        else:
            message = outcome.message if isinstance(outcome, GenerationError) else str(outcome) or "failed"
            record = await repository.mark_failed(self.db, job.id, message)
        await self._notify(record, images, outcome)
        await repository.clear_interaction_token(self.db, job.id)  # delivered (or given up on): no longer needed

    async def _store(self, job: JobRecord, result: GenerationResult) -> list[ImageRecord]:
        """Each image: the file (fsynced) first, then its row, so no row ever names a missing file."""
        records: list[ImageRecord] = []
        for image in result.images:
            stored = await save_image(self.images_dir, job.id, image.index, image.png)
            records.append(await repository.add_image(
                self.db, job.id, index=image.index, seed=image.seed, path=stored.path, sha256=stored.sha256,
                size_bytes=stored.size_bytes, width=image.width, height=image.height,
            ))
        return records

    async def _notify(self, job: JobRecord, images: list[ImageRecord], outcome: Any) -> None:
        for callback in list(self._listeners):
            try:
                await callback(job, images, outcome)
            except Exception:
                log.exception("delivery listener %r failed for job %s", callback, job.id)
