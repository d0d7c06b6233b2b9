"""PNG files on disk, kept consistent with the ``images`` rows.

Order of writes: the file is written to a temporary name, fsynced and renamed into place BEFORE its row is
committed, so a row never names a file that is not complete, and a job is marked done only after all its rows.
A crash therefore leaves at worst a temporary file or a file without a row, and only for a job the journal
still holds as queued or running: :func:`sweep_orphans` checks exactly those at the next start, so start-up
costs the same whatever the size of the history. :func:`sweep_everything` (``imagine-bot db sweep``) checks
every file and row. All file I/O runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from bot.clock import utcnow
from bot.storage import repository
from bot.storage.db import Database
from bot.storage.records import ImageRecord, JobRecord

TMP_SUFFIX = ".tmp"
INPUTS_DIR = "inputs"  # uploaded starting images (img2img), named by their content


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


def input_relpath(sha256: str) -> str:
    """By content: the same picture uploaded again (or a job run again) is stored once."""
    return f"{INPUTS_DIR}/{sha256[:2]}/{sha256}.png"


def save_image_sync(images_dir: Path, job_id: int, index: int, png: bytes) -> StoredImage:
    """Write ``png`` atomically (temp file, fsync, rename, fsync folder)."""
    return _write_atomically(Path(images_dir), image_relpath(job_id, index), png)


def _write_atomically(images_dir: Path, relpath: str, png: bytes) -> StoredImage:
    target = images_dir / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    # unique per write: two jobs may store the same upload (same content, same name) at the same moment
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
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


async def save_input(images_dir: Path, png: bytes) -> StoredImage:
    """Keep an uploaded starting image (a normalised PNG) so its job can run again after a restart; the caller
    records the path in the job's row afterwards (file first, as for results)."""
    return await asyncio.to_thread(_write_atomically, Path(images_dir), input_relpath(sha256_of(png)), png)


async def read_image(images_dir: Path, image: ImageRecord) -> bytes:
    return await read_stored(images_dir, image.path)


async def read_stored(images_dir: Path, path: str) -> bytes:
    """The bytes of a stored file (a result, or a job's starting image) by its row's path; OSError if gone."""
    return await asyncio.to_thread(resolve(Path(images_dir), path).read_bytes)


def _files_under(images_dir: Path) -> list[Path]:
    if not images_dir.is_dir():
        return []
    return [p for p in images_dir.rglob("*") if p.is_file()]


def _normalised(images_dir: Path, path: str) -> str:
    """A row's file as a plain string, without ``Path.resolve`` (a system call per path component)."""
    return os.path.normpath(resolve(images_dir, path))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_empty_dirs(images_dir: Path, folders: set[Path] | None = None) -> None:
    """Remove empty folders: ``folders`` (and their empty parents inside ``images_dir``), else all of them."""
    if not images_dir.is_dir():
        return
    if folders is None:
        folders = {p for p in images_dir.rglob("*") if p.is_dir()}
    else:
        folders = {parent for folder in folders for parent in (folder, *folder.parents)
                   if parent != images_dir and parent.is_relative_to(images_dir)}
    for directory in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only succeeds when empty


def _leftovers_of(images_dir: Path, jobs: list[JobRecord], rows: list[ImageRecord]) -> tuple[list[Path], list[int]]:
    """The files a crash can have left for ``jobs`` that no row names, and the rows whose file is gone."""
    known = {_normalised(images_dir, row.path) for row in rows}
    candidates: list[Path] = []
    tmp_prefixes: dict[Path, list[str]] = {}
    for job in jobs:
        for index in range(job.params.count):
            target = images_dir / image_relpath(job.id, index)
            candidates.append(target)
            tmp_prefixes.setdefault(target.parent, []).append(f".{job.id}-")
    for folder, prefixes in tmp_prefixes.items():
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as entries:
            candidates.extend(Path(entry.path) for entry in entries
                              if entry.name.endswith(TMP_SUFFIX) and entry.name.startswith(tuple(prefixes)))
    orphans = [path for path in candidates if os.path.normpath(path) not in known and path.is_file()]
    missing = [row.id for row in rows if not row.pruned and not resolve(images_dir, row.path).is_file()]
    return orphans, missing


async def sweep_orphans(db: Database, images_dir: Path) -> SweepReport:
    """At start (before the worker runs): remove what a crash left behind, looking only where it can be.

    That is the files of jobs still queued or running: temporary files, and files whose row was never
    committed (deleted; the job runs again and writes them anew). Their rows whose file is gone are marked
    ``pruned`` so nobody tries to post them. Cost: the unfinished jobs, never the whole history.
    """
    images_dir = Path(images_dir)
    report = SweepReport()
    jobs = await repository.unfinished_jobs(db)
    if not jobs:
        return report
    rows = await repository.images_of_jobs(db, [job.id for job in jobs])
    orphans, missing = await asyncio.to_thread(_leftovers_of, images_dir, jobs, rows)
    await _apply(db, images_dir, report, orphans, missing)
    return report


async def _apply(db: Database, images_dir: Path, report: SweepReport, orphans: list[Path],
                 missing: list[int]) -> None:
    await asyncio.to_thread(_remove, orphans)
    report.orphan_files_removed = sorted(str(f.relative_to(images_dir)) for f in orphans)
    await repository.mark_images_pruned(db, missing)
    report.rows_marked_missing = missing
    await asyncio.to_thread(_remove_empty_dirs, images_dir, {f.parent for f in orphans})


def _unknown_files(images_dir: Path, known_paths: set[str], rows: list[ImageRecord]) -> tuple[list[Path], list[int]]:
    known = {_normalised(images_dir, path) for path in known_paths}
    orphans = [f for f in _files_under(images_dir) if os.path.normpath(f) not in known]
    missing = [row.id for row in rows if not resolve(images_dir, row.path).is_file()]
    return orphans, missing


async def sweep_everything(db: Database, images_dir: Path) -> SweepReport:
    """Every file against every row (``imagine-bot db sweep``, with the bot stopped): files no row names are
    deleted, rows whose file is gone are marked ``pruned``. Reads the whole history; never run at start."""
    images_dir = Path(images_dir)
    report = SweepReport()
    known = await repository.all_image_paths(db)
    rows = await repository.stored_images(db)
    orphans, missing = await asyncio.to_thread(_unknown_files, images_dir, known, rows)
    await _apply(db, images_dir, report, orphans, missing)
    await asyncio.to_thread(_remove_empty_dirs, images_dir)
    return report


async def prune(db: Database, images_dir: Path, older_than: timedelta) -> PruneReport:
    """Delete the files of images created more than ``older_than`` ago and mark their rows pruned.

    Only the old rows still stored are read (an index serves it) and only their folders are tidied, so a
    prune that finds little to do costs little at any history size.
    """
    images_dir = Path(images_dir)
    rows = await repository.stored_images(db, older_than=utcnow() - older_than)

    def delete() -> PruneReport:
        report = PruneReport()
        folders: set[Path] = set()
        for row in rows:
            path = resolve(images_dir, row.path)
            folders.add(path.parent)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                report.already_missing += 1
                continue
            report.files_deleted += 1
            report.bytes_freed += size
        _remove_empty_dirs(images_dir, folders)
        return report

    report = await asyncio.to_thread(delete)
    report.rows_marked = await repository.mark_images_pruned(db, [r.id for r in rows])
    inputs = await repository.stale_input_paths(db, f"{INPUTS_DIR}/", older_than=utcnow() - older_than)

    def delete_inputs() -> None:
        emptied: set[Path] = set()
        for relpath in inputs:
            path = resolve(images_dir, relpath)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            emptied.add(path.parent)
            report.files_deleted += 1
            report.bytes_freed += size
        _remove_empty_dirs(images_dir, emptied)  # only the folders this emptied: the rest is never walked

    await asyncio.to_thread(delete_inputs)
    return report
