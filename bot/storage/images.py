"""PNG files on disk, kept consistent with the ``images`` rows.

Order of writes: the file is written to a temporary name, fsynced and renamed into place BEFORE its row is
committed, so a row never names a file that is not complete. A crash between the two leaves at worst a file
without a row, which :func:`sweep_orphans` removes at the next start. All file I/O runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from bot.clock import utcnow
from bot.storage import repository
from bot.storage.db import Database
from bot.storage.records import ImageRecord

TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class StoredImage:
    """A PNG safely on disk; ``path`` is relative to the images folder (what the row stores)."""

    path: str
    absolute_path: Path
    sha256: str
    size_bytes: int


@dataclass
class SweepReport:
    orphan_files_removed: list[str] = field(default_factory=list)
    rows_marked_missing: list[int] = field(default_factory=list)


@dataclass
class PruneReport:
    files_deleted: int = 0
    bytes_freed: int = 0
    rows_marked: int = 0
    already_missing: int = 0


def image_relpath(job_id: int, index: int) -> str:
    """Deterministic, so a job that runs again after a restart overwrites its own earlier file."""
    return f"{job_id // 1000:04d}/{job_id}-{index}.png"


def resolve(images_dir: Path, path: str) -> Path:
    """The file of a row's ``path`` (relative to ``images_dir``; absolute paths are kept as they are)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(images_dir) / candidate


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform (Windows); best effort
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_image_sync(images_dir: Path, job_id: int, index: int, png: bytes) -> StoredImage:
    """Write ``png`` atomically (temp file, fsync, rename, fsync folder)."""
    relpath = image_relpath(job_id, index)
    target = Path(images_dir) / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(png)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return StoredImage(path=relpath, absolute_path=target, sha256=sha256_of(png), size_bytes=len(png))


async def save_image(images_dir: Path, job_id: int, index: int, png: bytes) -> StoredImage:
    """Write the file off the event loop; the caller commits the row (``repository.add_image``) afterwards."""
    return await asyncio.to_thread(save_image_sync, Path(images_dir), job_id, index, png)


async def read_image(images_dir: Path, image: ImageRecord) -> bytes:
    return await asyncio.to_thread(resolve(Path(images_dir), image.path).read_bytes)


def _files_under(images_dir: Path) -> list[Path]:
    if not images_dir.is_dir():
        return []
    return [p for p in images_dir.rglob("*") if p.is_file()]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_empty_dirs(images_dir: Path) -> None:
    if not images_dir.is_dir():
        return
    for directory in sorted((p for p in images_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                            reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only succeeds when empty


async def sweep_orphans(db: Database, images_dir: Path) -> SweepReport:
    """At start (before the worker runs): delete files no row names, and mark rows whose file is gone.

    A row with a missing file is marked ``pruned`` so nobody tries to post it; the row itself stays.
    """
    images_dir = Path(images_dir)
    report = SweepReport()
    known = await repository.all_image_paths(db)
    known_files = {resolve(images_dir, p).resolve() for p in known}
    files = await asyncio.to_thread(_files_under, images_dir)
    orphans = [f for f in files if f.resolve() not in known_files]
    await asyncio.to_thread(_remove, orphans)
    report.orphan_files_removed = sorted(str(f.relative_to(images_dir)) for f in orphans)

    rows = await repository.stored_images(db)
    exists = await asyncio.to_thread(lambda: [resolve(images_dir, r.path).is_file() for r in rows])
    missing = [r.id for r, ok in zip(rows, exists, strict=True) if not ok]
    await repository.mark_images_pruned(db, missing)
    report.rows_marked_missing = missing
    await asyncio.to_thread(_remove_empty_dirs, images_dir)
    return report


async def prune(db: Database, images_dir: Path, older_than: timedelta) -> PruneReport:
    """Delete the files of images created more than ``older_than`` ago and mark their rows pruned."""
    images_dir = Path(images_dir)
    rows = await repository.stored_images(db, older_than=utcnow() - older_than)

    def delete() -> PruneReport:
        report = PruneReport()
        for row in rows:
            path = resolve(images_dir, row.path)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                report.already_missing += 1
                continue
            report.files_deleted += 1
            report.bytes_freed += size
        _remove_empty_dirs(images_dir)
        return report

    report = await asyncio.to_thread(delete)
    report.rows_marked = await repository.mark_images_pruned(db, [r.id for r in rows])
    return report
