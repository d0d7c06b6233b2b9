"""JobJournal: journal first, then queue; follow each job into the database; recover after a restart.

Most tests drive a scripted fake worker (the ARCHITECTURE contract) so every state change is deterministic;
one runs the real GenerationWorker with a fake engine. The crash test with the real tiny model is
test_journal_kill.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import RateLimitSettings
from bot.gate.rate_limits import RateLimiter
from bot.journal.job_journal import JobJournal, request_of
from bot.storage import repository as repo
from bot.storage.db import Database
from generation.request import GenerationRequest
from generation.worker import (
    GeneratedImage,
    GenerationFailedError,
    GenerationResult,
    GenerationWorker,
    JobCancelledError,
    QueueFullError,
)
from tests.helpers import eventually, new_job, params

pytestmark = pytest.mark.timeout(60)


def request(prompt: str = "a cat", count: int = 2, seed: int = 7, requester: str = "30") -> GenerationRequest:
    return GenerationRequest(params(prompt=prompt, seed=seed, count=count), requester_id=requester)


ORIGIN: dict[str, Any] = dict(guild_id=10, channel_id=20, user_id=30, interaction_id=40, interaction_token="tok",
                              application_id=50)


class FakeHandle:
    def __init__(self, job_id: str, req: GenerationRequest) -> None:
        self.job_id, self.request = job_id, req
        self._status = "queued"
        self._future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self._future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def __await__(self):  # noqa: ANN204
        return asyncio.shield(self._future).__await__()

    @property
    def status(self) -> str:
        return self._status

    def cancel(self) -> bool:
        if self._future.done():
            return False
        self._status = "cancelled"
        self._future.set_exception(JobCancelledError("This job was cancelled."))
        return True


class FakeWorker:
    """The worker contract, steered by the test: run(), finish(), fail()."""

    def __init__(self, db_path: Path, capacity: int = 100) -> None:
        self.db_path, self.capacity = db_path, capacity
        self.handles: dict[str, FakeHandle] = {}
        self.status_at_submit: list[str | None] = []

    def submit(self, req: GenerationRequest, *, job_id: str | None = None) -> FakeHandle:
        # The job must already be committed: read it with a separate, plain sqlite3 connection.
        with sqlite3.connect(self.db_path) as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (int(job_id or 0),)).fetchone()
        self.status_at_submit.append(row[0] if row else None)
        if sum(h.status == "queued" for h in self.handles.values()) >= self.capacity:
            raise QueueFullError("The queue is full.")
        handle = FakeHandle(job_id or "", req)
        self.handles[handle.job_id] = handle
        return handle

    def run(self, job_id: int) -> None:
        self.handles[str(job_id)]._status = "running"

    def finish(self, job_id: int) -> GenerationResult:
        handle = self.handles[str(job_id)]
        req = handle.request
        images = [GeneratedImage(index=i, seed=req.params.seed + i, png=f"png {job_id} {i}".encode(), width=64,
                                 height=64) for i in range(req.params.count)]
        result = GenerationResult(job_id=handle.job_id, request=req, images=images, model_name="fake",
                                  elapsed_seconds=0.1, prompt_truncated=True)
        handle._status = "done"
        handle._future.set_result(result)
        return result

    def fail(self, job_id: int, exc: BaseException) -> None:
        handle = self.handles[str(job_id)]
        handle._status = "failed"
        handle._future.set_exception(exc)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'journal.db'}")
    await database.create_all()
    yield database
    await database.close()


@pytest.fixture
def worker(tmp_path: Path) -> FakeWorker:
    return FakeWorker(tmp_path / "journal.db")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, list, Any]] = []

    async def __call__(self, job: Any, images: list, outcome: Any) -> None:
        self.calls.append((job, images, outcome))


async def test_accept_journals_before_queueing_then_records_success(db: Database, worker: FakeWorker,
                                                                    tmp_path: Path) -> None:
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    recorder = Recorder()
    journal.add_listener(recorder)
    job, handle = await journal.accept(request(), **ORIGIN)
    assert worker.status_at_submit == ["queued"]  # committed before the worker saw it
    assert job.status == "queued" and job.params.model == "tiny" and handle is journal.handle_for(job.id)

    worker.run(job.id)

    async def is_running() -> bool:
        return (await repo.get_job(db, job.id)).status == "running"

    await eventually(is_running)
    result = worker.finish(job.id)
    await journal.wait_idle()
    done = await repo.get_job(db, job.id)
    assert done.status == "done" and done.started_at is not None and done.prompt_truncated
    images = await repo.images_for_job(db, job.id)
    assert [(i.index, i.seed) for i in images] == [(0, 7), (1, 8)]
    for image, generated in zip(images, result.images, strict=True):
        data = (tmp_path / "images" / image.path).read_bytes()
        assert data == generated.png and image.sha256 == hashlib.sha256(data).hexdigest()
    [(delivered, delivered_images, outcome)] = recorder.calls
    assert delivered.status == "done" and delivered_images == images and outcome is result
    assert journal.handle_for(job.id) is None


async def test_failure_and_cancel_are_recorded(db: Database, worker: FakeWorker, tmp_path: Path) -> None:
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    recorder = Recorder()
    journal.add_listener(recorder)
    failing, _ = await journal.accept(request("a"), **ORIGIN)
    cancelled, _ = await journal.accept(request("b"), **ORIGIN)
    worker.fail(failing.id, GenerationFailedError("Not enough GPU memory"))
    assert await journal.cancel(cancelled.id)
    await journal.wait_idle()
    assert (await repo.get_job(db, failing.id)).error == "Not enough GPU memory"
    assert (await repo.get_job(db, cancelled.id)).status == "cancelled"
    outcomes = {job.id: (job.status, type(outcome)) for job, _, outcome in recorder.calls}
    assert outcomes == {failing.id: ("failed", GenerationFailedError),
                        cancelled.id: ("cancelled", JobCancelledError)}
    assert not await journal.cancel(cancelled.id)


async def test_cancelling_a_waiting_job_frees_the_members_slot_at_once(db: Database, worker: FakeWorker,
                                                                       tmp_path: Path) -> None:
    """No wait for the follower: the job stops counting as queued, and its images are given back."""
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    limiter = RateLimiter(db, RateLimitSettings(images_per_window=2, max_queued_per_user=1))
    first = await limiter.reserve(10, 30, 2)
    waiting, _ = await journal.accept(request(count=2), **ORIGIN, ledger_entry_id=first.entry_id)
    assert (await limiter.usage(10, 30)).queued == 1
    assert await journal.cancel(waiting.id)
    # Straight after /cancel answers (the follower has not recorded anything yet):
    assert (await repo.get_job(db, waiting.id)).status == "cancelled"
    usage = await limiter.usage(10, 30)
    assert (usage.queued, usage.used) == (0, 0)
    again = await limiter.reserve(10, 30, 2)
    await journal.wait_idle()
    assert (await repo.get_job(db, waiting.id)).status == "cancelled"
    # A job cancelled while running keeps its grant (the images were being made).
    running, _ = await journal.accept(request(count=2), **ORIGIN, ledger_entry_id=again.entry_id)
    worker.run(running.id)
    await repo.mark_running(db, running.id)
    assert await journal.cancel(running.id)
    await journal.wait_idle()
    assert (await repo.get_job(db, running.id)).status == "cancelled"
    assert (await limiter.usage(10, 30)).used == 2


async def test_queue_full_marks_refused_and_links_reservation(db: Database, tmp_path: Path) -> None:
    worker = FakeWorker(tmp_path / "journal.db", capacity=1)
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    limiter = RateLimiter(db, RateLimitSettings(images_per_window=100))
    first_reservation = await limiter.reserve(10, 30, 2)
    first, _ = await journal.accept(request(), **ORIGIN, ledger_entry_id=first_reservation.entry_id)
    reservation = await limiter.reserve(10, 30, 2)
    with pytest.raises(QueueFullError):
        await journal.accept(request(), **ORIGIN, ledger_entry_id=reservation.entry_id)
    refused = (await repo.jobs_for_user(db, 10, 30, limit=1))[0]
    assert refused.status == "refused" and refused.error == "The queue is full."
    await limiter.release(reservation)
    assert (await limiter.usage(10, 30)).used == 2 and (await limiter.usage(10, 30)).queued == 1
    with sqlite3.connect(tmp_path / "journal.db") as conn:
        assert conn.execute("SELECT job_id FROM rate_limit_ledger").fetchall() == [(first.id,)]
    worker.finish(first.id)
    await journal.wait_idle()


async def test_a_raising_listener_does_not_lose_the_outcome(db: Database, worker: FakeWorker,
                                                            tmp_path: Path) -> None:
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")

    async def broken(*_: Any) -> None:
        raise RuntimeError("discord is down")

    recorder = Recorder()
    journal.add_listener(broken)
    journal.add_listener(recorder)
    job, _ = await journal.accept(request(count=1), **ORIGIN)
    worker.finish(job.id)
    await journal.wait_idle()
    assert (await repo.get_job(db, job.id)).status == "done"
    assert len(await repo.images_for_job(db, job.id)) == 1 and len(recorder.calls) == 1


async def test_saving_failure_marks_failed(db: Database, worker: FakeWorker, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the images folder should be")
    journal = JobJournal(db, worker, blocker, "tiny")
    recorder = Recorder()
    journal.add_listener(recorder)
    job, _ = await journal.accept(request(count=1), **ORIGIN)
    worker.finish(job.id)
    await journal.wait_idle()
    failed = await repo.get_job(db, job.id)
    assert failed.status == "failed" and "could not be saved" in failed.error
    assert await repo.images_for_job(db, job.id) == [] and isinstance(recorder.calls[0][2], OSError)


async def test_recover_requeues_in_original_order(db: Database, worker: FakeWorker, tmp_path: Path) -> None:
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    jobs = [await new_job(db, **ORIGIN, prompt=f"p{i}", negative_prompt="n", seed=i, steps=2, guidance=7.5,
                                  width=64, height=64, count=1, scheduler="euler", model="tiny") for i in range(4)]
    await repo.mark_running(db, jobs[1].id)
    await repo.mark_done(db, jobs[2].id)
    recovered = await journal.recover()
    assert [job.id for job, _ in recovered] == [jobs[0].id, jobs[1].id, jobs[3].id]
    assert all(job.status == "queued" for job, _ in recovered)  # the running one starts over
    assert recovered[1][1].request == request_of(jobs[1]) and recovered[1][1].request.requester_id == "30"
    assert await journal.recover() == []  # already followed
    for job, _ in recovered:
        worker.finish(job.id)
    await journal.wait_idle()
    assert [j.status for j in [await repo.get_job(db, j.id) for j in jobs]] == ["done"] * 4


async def test_recover_beyond_capacity_refuses_and_tells(db: Database, tmp_path: Path) -> None:
    worker = FakeWorker(tmp_path / "journal.db", capacity=1)
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    recorder = Recorder()
    journal.add_listener(recorder)
    for i in range(2):
        await new_job(db, **ORIGIN, prompt=f"p{i}", negative_prompt="", seed=i, steps=2, guidance=7.5,
                              width=64, height=64, count=1, scheduler="euler", model="tiny")
    recovered = await journal.recover()
    assert len(recovered) == 1
    [(refused, _, outcome)] = recorder.calls
    assert refused.status == "refused" and isinstance(outcome, QueueFullError)
    worker.finish(recovered[0][0].id)
    await journal.wait_idle()


async def test_shutdown_leaves_dropped_jobs_queued(db: Database, worker: FakeWorker, tmp_path: Path) -> None:
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    job, handle = await journal.accept(request(), **ORIGIN)
    await journal.close()
    handle.cancel()  # what worker.close() does to queued jobs
    await journal.wait_idle()
    assert (await repo.get_job(db, job.id)).status == "queued"
    assert [j.id for j in await repo.unfinished_jobs(db)] == [job.id]


class SolidEngine:
    """A tiny real-worker engine: solid images, two steps."""

    model_name = "solid"

    def batch_key(self, req: GenerationRequest) -> tuple:
        return (req.params.width, req.params.height)

    def generate(self, requests: Sequence[GenerationRequest], *, on_step: Any = None,
                 should_stop: Any = None) -> list[list[Image.Image]]:
        for step in (1, 2):
            if on_step:
                on_step(step, 2, None)
        return [[Image.new("RGB", (r.params.width, r.params.height), ((r.params.seed + i) % 256, 0, 0))
                 for i in range(r.params.count)]
                for r in requests]

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return False

    def free_memory(self) -> None:
        pass

    def tokens_truncated(self, prompt: str) -> bool:
        return False


async def test_with_the_real_worker(db: Database, tmp_path: Path) -> None:
    worker = GenerationWorker(SolidEngine(), queue_size=8, max_batch_size=4)
    journal = JobJournal(db, worker, tmp_path / "images", "solid")
    await worker.start()
    try:
        accepted = [await journal.accept(request(f"p{i}", count=2, seed=i * 10, requester=str(i % 2)),
                                         **{**ORIGIN, "user_id": i % 2}) for i in range(3)]
        results = await asyncio.gather(*(handle for _, handle in accepted))
        await journal.wait_idle()
    finally:
        await worker.close()
    for (job, _), result in zip(accepted, results, strict=True):
        record = await repo.get_job(db, job.id)
        assert record.status == "done" and record.started_at is not None
        images = await repo.images_for_job(db, job.id)
        assert [i.sha256 for i in images] == [hashlib.sha256(g.png).hexdigest() for g in result.images]
