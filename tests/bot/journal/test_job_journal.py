"""JobJournal: journal first, then queue; follow each job into the database; recover after a restart.

Most tests drive a scripted fake worker (the ARCHITECTURE contract) so every state change is deterministic;
one runs the real GenerationWorker with a fake engine. The crash test with the real tiny model is
test_journal_kill.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.config import RateLimitSettings
from bot.gate.rate_limits import RateLimiter
from bot.journal.job_journal import DISK_FULL_MESSAGE, SAVE_FAILED_MESSAGE, JobJournal, request_of
from bot.storage import repository as repo
from bot.storage.db import Database
from bot.storage.images import TMP_SUFFIX, image_relpath
from bot.storage.models import Job, RateLimitEntry
from generation.request import GenerationRequest
from generation.worker import (
    GeneratedImage,
    GenerationFailedError,
    GenerationResult,
    GenerationWorker,
    JobCancelledError,
    QueueFullError,
)
from tests.helpers import SolidEngine, eventually, fill_up, new_job, params, small_tmpfs

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


def committed_status(url: str, job_id: int) -> str | None:
    """The job's status as another engine and connection see it: only what is committed is visible there."""

    async def read() -> str | None:
        other = Database.connect(url)
        try:
            async with other.session() as session:
                return await session.scalar(select(Job.status).where(Job.id == job_id))
        finally:
            await other.close()

    with ThreadPoolExecutor(max_workers=1) as pool:  # its own event loop: submit() is synchronous
        return pool.submit(asyncio.run, read()).result()


class FakeWorker:
    """The worker contract, steered by the test: run(), finish(), fail()."""

    def __init__(self, db_url: str, capacity: int = 100) -> None:
        self.db_url, self.capacity = db_url, capacity
        self.handles: dict[str, FakeHandle] = {}
        self.status_at_submit: list[str | None] = []

    def add_placement_listener(self, callback: Any) -> None:
        self.placement_listener = callback

    def submit(self, req: GenerationRequest, *, job_id: str | None = None, attempt: int = 0) -> FakeHandle:
        self.status_at_submit.append(committed_status(self.db_url, int(job_id or 0)))  # must be committed
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
def worker(db: Database) -> FakeWorker:
    return FakeWorker(db.url)


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
    waiting, _ = await journal.accept(request(count=2), **ORIGIN,
                                     ledger_entry_id=(await limiter.reserve(10, 30, 2)).entry_id)
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
    worker = FakeWorker(db.url, capacity=1)
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
    async with db.session() as session:
        assert list(await session.scalars(select(RateLimitEntry.job_id))) == [first.id]
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
    assert failed.status == "failed" and failed.error == SAVE_FAILED_MESSAGE
    outcome = recorder.calls[0][2]
    assert await repo.images_for_job(db, job.id) == [] and isinstance(outcome, GenerationFailedError)
    assert outcome.message == SAVE_FAILED_MESSAGE  # what the member reads: one sentence, no traceback


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
async def test_disk_full_while_saving_tells_the_member_and_marks_failed(db: Database, worker: FakeWorker,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ENOSPC from the kernel: the image's temporary file is where /dev/full is."""
    from bot.storage import images as image_store

    monkeypatch.setattr(image_store.secrets, "token_hex", lambda _n: "fixed")  # a temporary name known in advance
    images = tmp_path / "images"
    journal = JobJournal(db, worker, images, "tiny")
    recorder = Recorder()
    journal.add_listener(recorder)
    job, _ = await journal.accept(request(count=2), **ORIGIN)
    second = images / image_relpath(job.id, 1)
    second.parent.mkdir(parents=True)
    second.with_name(f".{second.name}.{os.getpid()}.fixed{TMP_SUFFIX}").symlink_to("/dev/full")
    worker.finish(job.id)
    await journal.wait_idle()

    failed = await repo.get_job(db, job.id)
    assert failed.status == "failed" and failed.error == DISK_FULL_MESSAGE
    record, images_told, outcome = recorder.calls[0]
    assert record.status == "failed" and images_told == []
    assert isinstance(outcome, GenerationFailedError) and outcome.message == DISK_FULL_MESSAGE
    assert not list(second.parent.glob(f"*{TMP_SUFFIX}")), "the temporary file was left behind"


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
    worker = FakeWorker(db.url, capacity=1)
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




def job_status(db_path: Path, job_id: int) -> str:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


async def test_disk_full_for_the_database_too_member_told_at_once_failure_recorded_later(tmp_path: Path) -> None:
    """The disk holding the images AND the database fills up while a job runs: saving fails, and so does the
    error handler's own write. The member is told anyway, and the failure is written once there is room."""
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        database = Database.connect(f"sqlite+aiosqlite:///{disk / 'journal.db'}")
        await database.create_all()
        journal = JobJournal(database, FakeWorker(database.url), disk / "images", "tiny")
        recorder = Recorder()
        journal.add_listener(recorder)
        try:
            job, _ = await journal.accept(request(count=1), **ORIGIN)
            filler = fill_up(disk)
            journal.worker.finish(job.id)

            async def told() -> bool:
                return bool(recorder.calls)

            await eventually(told)
            record, _, outcome = recorder.calls[0]
            assert record.status == "failed" and isinstance(outcome, GenerationFailedError)
            assert outcome.message == DISK_FULL_MESSAGE
            assert job_status(disk / "journal.db", job.id) == "queued", "the database write should have failed"

            filler.unlink()

            async def recorded() -> bool:
                return job_status(disk / "journal.db", job.id) == "failed"

            await eventually(recorded, timeout=20)
            failed = await repo.get_job(database, job.id)
            assert failed.error == DISK_FULL_MESSAGE
        finally:
            await journal.close()
            await database.close()


def img2img_request(start: bytes, seed: int = 7) -> GenerationRequest:
    return GenerationRequest(params(prompt="a cat", seed=seed, count=1, strength=0.5), requester_id="30",
                             init_image=start)


async def test_an_uploaded_starting_image_is_stored_first_and_survives_a_restart(
        db: Database, worker: FakeWorker, tmp_path: Path) -> None:
    """The journal keeps an upload on disk (content-named) and a restart rebuilds the request with its bytes."""
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    upload = b"\x89PNG an uploaded picture"
    job, handle = await journal.accept(img2img_request(upload), **ORIGIN)
    assert job.init_image_path == f"inputs/{hashlib.sha256(upload).hexdigest()[:2]}/" \
                                  f"{hashlib.sha256(upload).hexdigest()}.png"
    assert (tmp_path / "images" / job.init_image_path).read_bytes() == upload
    assert handle.request.init_image == upload
    again, _ = await journal.accept(img2img_request(upload, seed=8), **ORIGIN)
    assert again.init_image_path == job.init_image_path  # the same picture is stored once

    # A new process: nothing followed, both jobs still queued in the journal.
    restarted = JobJournal(db, FakeWorker(db.url), tmp_path / "images", "tiny")
    recovered = await restarted.recover()
    assert [(j.id, h.request.init_image) for j, h in recovered] == [(job.id, upload), (again.id, upload)]
    assert recovered[0][1].request == request_of(job, upload)
    for journal_, ids in ((journal, (job.id, again.id)), (restarted, (job.id, again.id))):
        for job_id in ids:
            journal_.worker.finish(job_id)
        await journal_.wait_idle()


async def test_a_stored_parent_image_is_named_not_copied_and_a_lost_one_is_recovered_without_bytes(
        db: Database, worker: FakeWorker, tmp_path: Path) -> None:
    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    parent_png = tmp_path / "images" / "0000" / "5-1.png"
    parent_png.parent.mkdir(parents=True)
    parent_png.write_bytes(b"\x89PNG the parent")
    job, _ = await journal.accept(img2img_request(parent_png.read_bytes()), **ORIGIN, parent_job_id=None,
                                  parent_image_index=1, init_image_path="0000/5-1.png")
    assert (job.init_image_path, job.parent_image_index) == ("0000/5-1.png", 1)
    assert not (tmp_path / "images" / "inputs").exists()
    parent_png.unlink()  # pruned while the bot was down
    restarted = JobJournal(db, FakeWorker(db.url), tmp_path / "images", "tiny")
    [(recovered, handle)] = await restarted.recover()
    assert recovered.id == job.id and handle.request.init_image is None  # the engine refuses it with a sentence
    for journal_ in (journal, restarted):
        journal_.worker.finish(job.id)
        await journal_.wait_idle()


async def test_a_result_of_an_older_attempt_is_not_recorded(db: Database, worker: FakeWorker,
                                                            tmp_path: Path) -> None:
    from generation.worker import Placement

    journal = JobJournal(db, worker, tmp_path / "images", "tiny")
    recorder = Recorder()
    journal.add_listener(recorder)
    job, _ = await journal.accept(request(), **ORIGIN)
    worker.run(job.id)
    worker.placement_listener(str(job.id), Placement(attempt=2, worker_id="gpu-b", lease_expires_at=2e9))

    async def recorded() -> bool:
        return (await repo.get_job(db, job.id)).attempt == 2

    await eventually(recorded)
    row = await repo.get_job(db, job.id)
    assert row.worker_id == "gpu-b" and row.lease_expires_at is not None and row.lease_expires_at.year == 2033
    handle = worker.handles[str(job.id)]
    late = worker.finish(job.id)  # made by attempt 0 (the fake's default): older than the claim of attempt 2
    assert late.attempt < 2 and handle.status == "done"
    await journal.wait_idle()
    assert (await repo.get_job(db, job.id)).status == "running"  # still waiting for attempt 2's result
    assert await repo.images_for_job(db, job.id) == [] and recorder.calls == []
