from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, update

from bot.clock import utcnow
from bot.storage import repository as repo
from bot.storage.cli import parse_age
from bot.storage.db import Database
from bot.storage.images import (
    image_relpath,
    input_relpath,
    prune,
    read_image,
    read_stored,
    save_image,
    save_image_sync,
    save_input,
    sweep_everything,
    sweep_orphans,
)
from bot.storage.models import Image, Job
from tests.helpers import new_job


async def _job_with_image(db: Database, images_dir: Path, png: bytes = b"\x89PNG fake", *, count: int = 1,
                          done: bool = True) -> tuple[int, int]:
    job = await new_job(db, guild_id=1, channel_id=2, user_id=3, prompt="p", negative_prompt="", seed=5,
                                steps=1, guidance=1.0, width=8, height=8, count=count, scheduler="euler",
                                model="tiny")
    stored = await save_image(images_dir, job.id, 0, png)
    row = await repo.add_image(db, job.id, index=0, seed=5, path=stored.path, sha256=stored.sha256,
                               size_bytes=stored.size_bytes, width=8, height=8)
    if done:
        await repo.mark_done(db, job.id)
    return job.id, row.id


async def test_save_image_writes_atomically(tmp_path: Path) -> None:
    stored = await save_image(tmp_path / "images", 1234, 2, b"png-bytes")
    assert stored.path == image_relpath(1234, 2) == "0001/1234-2.png"
    assert stored.absolute_path.read_bytes() == b"png-bytes"
    assert stored.sha256 == hashlib.sha256(b"png-bytes").hexdigest() and stored.size_bytes == 9
    assert [p.name for p in stored.absolute_path.parent.iterdir()] == ["1234-2.png"]  # no temp file left
    again = await save_image(tmp_path / "images", 1234, 2, b"other")  # a rerun after restart overwrites
    assert again.absolute_path.read_bytes() == b"other"


async def test_start_up_sweep_cleans_what_a_crash_left_behind(db: Database, tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    _, finished = await _job_with_image(db, images_dir)
    # Killed while saving: image 0 saved with its row, image 1 renamed into place but its row never committed,
    # image 2 half written under its temporary name.
    crashed, saved = await _job_with_image(db, images_dir, count=3, done=False)
    await repo.mark_running(db, crashed)
    save_image_sync(images_dir, crashed, 1, b"no row yet")
    half_written = images_dir / "0000" / f".{crashed}-2.png.4242.tmp"
    half_written.write_bytes(b"half")
    # Queued, with a row whose file has gone since.
    queued, lost = await _job_with_image(db, images_dir, done=False)
    (images_dir / image_relpath(queued, 0)).unlink()
    # A file no row names, next to finished jobs: not something a crash leaves, so not looked at when starting.
    stray = images_dir / "0000" / "999-0.png"
    stray.write_bytes(b"no row")

    report = await sweep_orphans(db, images_dir)
    assert report.orphan_files_removed == sorted([image_relpath(crashed, 1), f"0000/.{crashed}-2.png.4242.tmp"])
    assert report.rows_marked_missing == [lost]
    assert not (images_dir / image_relpath(crashed, 1)).exists() and not half_written.exists()
    assert (await repo.get_image(db, lost)).pruned
    for kept in (finished, saved):
        row = await repo.get_image(db, kept)
        assert not row.pruned and await read_image(images_dir, row) == b"\x89PNG fake"
    assert stray.exists()

    everything = await sweep_everything(db, images_dir)  # `imagine-bot db sweep`
    assert everything.orphan_files_removed == ["0000/999-0.png"] and everything.rows_marked_missing == []
    assert not stray.exists()


async def test_start_up_sweep_reads_only_the_unfinished_jobs(db: Database, tmp_path: Path) -> None:
    """Its cost follows what was in flight at the crash, not the history: count the rows it loads."""
    images_dir = tmp_path / "images"
    for _ in range(30):
        await _job_with_image(db, images_dir)
    await _job_with_image(db, images_dir, count=2, done=False)
    loaded: list[str] = []

    def on_load(target: object, _context: object) -> None:
        loaded.append(type(target).__name__)

    for model in (Job, Image):
        event.listen(model, "load", on_load)
    try:
        report = await sweep_orphans(db, images_dir)
    finally:
        for model in (Job, Image):
            event.remove(model, "load", on_load)
    assert sorted(loaded) == ["Image", "Job"]  # the one unfinished job and its one image row
    assert report.orphan_files_removed == [] and report.rows_marked_missing == []
    assert len(list(images_dir.rglob("*.png"))) == 31


async def test_sweep_everything_marks_rows_whose_file_is_gone(db: Database, tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    _, kept = await _job_with_image(db, images_dir)
    _, lost = await _job_with_image(db, images_dir)
    (images_dir / (await repo.get_image(db, lost)).path).unlink()
    leftover_tmp = images_dir / "0000" / ".1-0.png.77.tmp"
    leftover_tmp.write_bytes(b"half")
    report = await sweep_everything(db, images_dir)
    assert report.orphan_files_removed == ["0000/.1-0.png.77.tmp"] and report.rows_marked_missing == [lost]
    assert (await repo.get_image(db, lost)).pruned and not (await repo.get_image(db, kept)).pruned


async def test_sweep_with_no_folder(db: Database, tmp_path: Path) -> None:
    await _job_with_image(db, tmp_path / "elsewhere", done=False)
    for sweep in (sweep_orphans, sweep_everything):
        report = await sweep(db, tmp_path / "missing")
        assert report.orphan_files_removed == []


async def test_prune_old_files_rows_stay(db: Database, tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    _, old = await _job_with_image(db, images_dir, b"old" * 10)
    _, new = await _job_with_image(db, images_dir)
    async with db.session(write=True) as s:
        await s.execute(update(Image).where(Image.id == old).values(created_at=utcnow() - timedelta(days=31)))
    report = await prune(db, images_dir, timedelta(days=30))
    assert (report.files_deleted, report.bytes_freed, report.rows_marked) == (1, 30, 1)
    old_row, new_row = await repo.get_image(db, old), await repo.get_image(db, new)
    assert old_row.pruned and not (images_dir / old_row.path).exists()
    assert not new_row.pruned and (images_dir / new_row.path).exists()
    again = await prune(db, images_dir, timedelta(days=30))
    assert (again.files_deleted, again.rows_marked) == (0, 0)


async def test_prune_tidies_only_the_folders_it_emptied(db: Database, tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    old_job, old = await _job_with_image(db, images_dir)
    async with db.session(write=True) as s:
        await s.execute(update(Image).where(Image.id == old).values(created_at=utcnow() - timedelta(days=31)))
    unrelated_empty = images_dir / "9999"
    unrelated_empty.mkdir()
    report = await prune(db, images_dir, timedelta(days=30))
    assert report.files_deleted == 1
    assert not (images_dir / image_relpath(old_job, 0)).parent.exists()  # emptied by the prune: removed
    assert unrelated_empty.is_dir()  # never walked


def test_parse_age() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("1d12h") == timedelta(days=1, hours=12)
    for bad in ("", "30", "d", "30s", "0d", "-1d", "30d junk"):
        with pytest.raises(ValueError):
            parse_age(bad)


async def _upload_job(db: Database, images_dir: Path, png: bytes, *, days_ago: float, status: str = "done") -> int:
    stored = await save_input(images_dir, png)
    job = await new_job(db, init_image_path=stored.path, strength=0.5)
    async with db.session(write=True) as s:
        await s.execute(update(Job).where(Job.id == job.id)
                        .values(queued_at=utcnow() - timedelta(days=days_ago), status=status))
    return job.id


async def test_uploads_are_kept_by_the_sweep_and_pruned_when_no_recent_job_needs_them(
        db: Database, tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    old, shared, running = b"\x89PNG old upload", b"\x89PNG used again lately", b"\x89PNG of a queued job"
    await _upload_job(db, images_dir, old, days_ago=40)
    await _upload_job(db, images_dir, shared, days_ago=40)
    await _upload_job(db, images_dir, shared, days_ago=1)
    await _upload_job(db, images_dir, running, days_ago=40, status="queued")
    paths = {data: images_dir / input_relpath(hashlib.sha256(data).hexdigest()) for data in (old, shared, running)}

    report = await sweep_orphans(db, images_dir)
    assert report.orphan_files_removed == [] and all(path.exists() for path in paths.values())

    pruned = await prune(db, images_dir, timedelta(days=30))
    assert (pruned.files_deleted, pruned.bytes_freed) == (1, len(old))
    assert not paths[old].exists() and paths[shared].exists() and paths[running].exists()
    assert await read_stored(images_dir, input_relpath(hashlib.sha256(shared).hexdigest())) == shared


async def test_saving_the_same_upload_twice_at_once_keeps_one_whole_file(tmp_path: Path) -> None:
    data = b"\x89PNG" + bytes(range(256)) * 400
    first, second = await asyncio.gather(save_input(tmp_path, data), save_input(tmp_path, data))
    assert first.path == second.path and first.absolute_path.read_bytes() == data
    assert [p.name for p in first.absolute_path.parent.iterdir()] == [first.absolute_path.name]
