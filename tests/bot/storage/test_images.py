from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from bot.clock import utcnow
from bot.storage import repository as repo
from bot.storage.cli import parse_age
from bot.storage.db import Database
from bot.storage.images import image_relpath, prune, read_image, save_image, sweep_orphans
from bot.storage.models import Image
from tests.helpers import new_job


async def _job_with_image(db: Database, images_dir: Path, png: bytes = b"\x89PNG fake") -> tuple[int, int]:
    job = await new_job(db, guild_id=1, channel_id=2, user_id=3, prompt="p", negative_prompt="", seed=5,
                                steps=1, guidance=1.0, width=8, height=8, count=1, scheduler="euler", model="tiny")
    stored = await save_image(images_dir, job.id, 0, png)
    row = await repo.add_image(db, job.id, index=0, seed=5, path=stored.path, sha256=stored.sha256,
                               size_bytes=stored.size_bytes, width=8, height=8)
    return job.id, row.id


async def test_save_image_writes_atomically(tmp_path: Path) -> None:
    stored = await save_image(tmp_path / "images", 1234, 2, b"png-bytes")
    assert stored.path == image_relpath(1234, 2) == "0001/1234-2.png"
    assert stored.absolute_path.read_bytes() == b"png-bytes"
    assert stored.sha256 == hashlib.sha256(b"png-bytes").hexdigest() and stored.size_bytes == 9
    assert [p.name for p in stored.absolute_path.parent.iterdir()] == ["1234-2.png"]  # no temp file left
    again = await save_image(tmp_path / "images", 1234, 2, b"other")  # a rerun after restart overwrites
    assert again.absolute_path.read_bytes() == b"other"


async def test_sweep_orphans(db: Database, tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    _, kept = await _job_with_image(db, images_dir)
    _, lost = await _job_with_image(db, images_dir)
    (images_dir / (await repo.get_image(db, lost)).path).unlink()
    orphan = images_dir / "0000" / "999-0.png"
    orphan.write_bytes(b"no row")
    leftover_tmp = images_dir / "0000" / ".1-0.png.77.tmp"
    leftover_tmp.write_bytes(b"half")

    report = await sweep_orphans(db, images_dir)
    assert report.orphan_files_removed == sorted(["0000/999-0.png", "0000/.1-0.png.77.tmp"])
    assert report.rows_marked_missing == [lost]
    assert not orphan.exists() and not leftover_tmp.exists()
    assert (images_dir / (await repo.get_image(db, kept)).path).exists()
    assert (await repo.get_image(db, lost)).pruned and not (await repo.get_image(db, kept)).pruned
    assert await read_image(images_dir, await repo.get_image(db, kept)) == b"\x89PNG fake"


async def test_sweep_with_no_folder(db: Database, tmp_path: Path) -> None:
    report = await sweep_orphans(db, tmp_path / "missing")
    assert report.orphan_files_removed == [] and report.rows_marked_missing == []


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


def test_parse_age() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("1d12h") == timedelta(days=1, hours=12)
    for bad in ("", "30", "d", "30s", "0d", "-1d", "30d junk"):
        with pytest.raises(ValueError):
            parse_age(bad)
