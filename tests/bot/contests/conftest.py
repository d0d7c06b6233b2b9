"""Fixtures for the contest tests: a fresh SQLite database, a hand-driven clock and a finished job factory."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from bot.clock import ManualClock, utcnow
from bot.contests.service import ContestService
from bot.storage import repository
from bot.storage.db import Database
from tests.helpers import new_job

GUILD = 1000
CHANNEL = 2000

MakeJob = Callable[..., Awaitable[int]]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'contests.db'}")
    await database.create_all()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def clock() -> ManualClock:
    # A little in the past so jobs journalled "now" (real time) fall inside the submission window.
    return ManualClock(utcnow() - timedelta(seconds=5))


@pytest.fixture
async def service(db: Database, clock: ManualClock, tmp_path: Path) -> AsyncIterator[ContestService]:
    svc = ContestService(db, clock=clock, images_dir=tmp_path / "images")
    try:
        yield svc
    finally:
        await svc.close()


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def make_job(db: Database, tmp_path: Path) -> MakeJob:
    """Journal a job for ``user`` and finish it with ``count`` stored images (or leave it at ``status``)."""

    async def _make(user: int, *, prompt: str = "a cat", status: str = "done", count: int = 1,
                    colour: tuple[int, int, int] = (200, 50, 50), guild: int = GUILD, nsfw: bool = False) -> int:
        job = await new_job(
            db, guild_id=guild, channel_id=CHANNEL, user_id=user, prompt=prompt, negative_prompt="", seed=1,
            steps=2, guidance=7.0, width=32, height=32, count=count, scheduler="euler", model="tiny")
        images = tmp_path / "images"
        images.mkdir(exist_ok=True)
        for index in range(count):
            path = images / f"{job.id}-{index}.png"
            path.write_bytes(png(colour))
            await repository.add_image(db, job.id, index=index, seed=1 + index, path=path.name, sha256="0" * 64,
                                       size_bytes=path.stat().st_size, width=32, height=32, nsfw=nsfw)
        if status == "done":
            await repository.mark_done(db, job.id)
        elif status == "refused":
            await repository.mark_refused(db, job.id, "blocked")
        elif status == "failed":
            await repository.mark_failed(db, job.id, "boom")
        return job.id

    return _make
