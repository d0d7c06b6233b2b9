"""What many tests share: small image parameters, journalled jobs, waiting for a condition, and an engine without
a model (:class:`SolidEngine`).

Import as ``from tests.helpers import ...`` (pytest puts the repository root on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import io
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image, ImageDraw
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from bot.config import Settings, settings_from_mapping
from bot.storage import repository
from bot.storage.db import Database
from bot.storage.records import JobRecord
from generation.request import GenerationRequest, ImageParams

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")

PARAM_FIELDS = frozenset(f.name for f in dataclasses.fields(ImageParams))
SMALL = {"prompt": "a cat", "negative_prompt": "", "seed": 7, "steps": 2, "guidance": 7.5, "width": 64,
         "height": 64, "count": 1, "scheduler": "euler", "model": "tiny"}


def params(**changes: Any) -> ImageParams:
    """Small, valid image parameters (64x64, 2 steps, tiny) with ``changes`` applied."""
    return ImageParams(**{**SMALL, **changes})


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    image = {k: v for k, v in values.items() if k in PARAM_FIELDS}
    return image, {k: v for k, v in values.items() if k not in PARAM_FIELDS}


def job_record(**changes: Any) -> JobRecord:
    """A JobRecord as the repository returns one; image parameters may be given by their field names."""
    image, rest = _split(changes)
    base: dict[str, Any] = {
        "id": 42, "guild_id": 1, "channel_id": 2, "user_id": 3, "interaction_id": None, "interaction_token": None,
        "application_id": None, "message_id": None, "status": "done", "error": None, "parent_job_id": None,
        "queued_at": datetime(2026, 1, 1, tzinfo=UTC), "started_at": None, "finished_at": None,
    }
    return JobRecord(params=rest.pop("params", None) or params(**image), **{**base, **rest})


async def new_job(db: Database, **changes: Any) -> JobRecord:
    """Journal a job through the real repository; image parameters may be given by their field names."""
    image, rest = _split(changes)
    rest.setdefault("guild_id", 1)
    rest.setdefault("channel_id", 2)
    rest.setdefault("user_id", 3)
    return await repository.create_job(db, params=rest.pop("params", None) or params(**image), **rest)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, section by section."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def local_bot_config(server: Any, data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The config mapping of a real bot on the local Discord server ``server`` with the tiny model, its database
    and images under ``data_dir``; ``sections`` are merged in (``rate_limits={"images_per_window": 2}``)."""
    base: dict[str, Any] = {
        "discord": {"token": server.token, "api_base_url": server.api_base_url, "gateway_url": server.gateway_url,
                    "guild_ids": [server.guild.id], "progress_edit_seconds": 0.2},
        "database": {"url": f"sqlite+aiosqlite:///{data_dir / 'imagine.db'}"},
        "storage": {"images_dir": str(data_dir / "images")},
        "generation": {"model": "tiny", "device": "cpu", "dtype": "fp32", "default_steps": 2, "max_steps": 30,
                       "default_width": 64, "default_height": 64, "min_size": 64, "max_size": 256,
                       "previews": False},
        "metrics": {"port": 0},  # served, on a free port: bots in parallel tests never collide
    }
    return merge(base, sections)


def local_bot_settings(server: Any, data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """:func:`local_bot_config` as validated settings (no environment variables read)."""
    return settings_from_mapping(local_bot_config(server, data_dir, **sections), environ={})


async def eventually(check: Callable[[], T | Awaitable[T]], what: str = "the condition",
                     timeout: float = 10.0, interval: float = 0.02) -> T:  # noqa: ASYNC109
    """Poll ``check`` (sync or async) until it returns something truthy; fail with ``what`` after ``timeout``.

    Tests wait for events this way instead of sleeping a fixed time, so they pass on slow machines too.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def picture_png(size: tuple[int, int] = (96, 80), *, variant: int = 0) -> bytes:
    """A PNG with structure (a gradient, a disc and a bar that move with ``variant``): something img2img can keep."""
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    x = (variant * 37) % max(1, width // 2)
    draw.ellipse((x, height // 4, x + width // 3, height // 4 + width // 3), fill=(220, 40, 40))
    draw.rectangle((0, height - height // 5, width, height), fill=(30, 60 + 40 * (variant % 4), 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(side: int = 16000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of ``side`` x ``side`` white pixels, a few tens of KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\xff" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real, small file system (needs the right to mount: root or CAP_SYS_ADMIN; skipped otherwise)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(directory: Path) -> Path:
    """Write a file until the file system says ENOSPC; removing it gives the space back."""
    filler = directory / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def on_connection(url: str, work: Callable[[Connection], Any]) -> Any:
    """Run ``work`` with a plain (sync-style) connection to ``url``; from synchronous tests only (migrations)."""

    async def run() -> Any:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


class SolidEngine:
    """A batch engine without a model: solid images (one colour per seed) in two steps, so the real worker, journal
    and delivery run around it. Tests that hold, fail or pause it subclass it and override :meth:`generate`."""

    model_name = "solid"

    def batch_key(self, request: GenerationRequest) -> tuple:
        return (request.params.width, request.params.height, request.params.steps)

    def generate(self, requests: Sequence[GenerationRequest], *, on_step: Any = None,
                 should_stop: Any = None) -> list[list[Image.Image]]:
        for step in (1, 2):
            if on_step is not None:
                on_step(step, 2, None)
        return self.images(requests)

    @staticmethod
    def images(requests: Sequence[GenerationRequest], blue: int = 0) -> list[list[Image.Image]]:
        return [[Image.new("RGB", (r.params.width, r.params.height), ((r.params.seed + i) % 256, 0, blue))
                 for i in range(r.params.count)] for r in requests]

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return False

    def free_memory(self) -> None:
        pass

    def tokens_truncated(self, params: ImageParams) -> bool:
        return False

    def model_label(self, params: ImageParams) -> str:
        return self.model_name


class SteppedEngine(SolidEngine):
    """A :class:`SolidEngine` that runs each batch's denoising steps one by one, so a test can hold it before the
    first step (``gate``), pause it after one (``pause_after_step``, then ``paused``/``resume``) and see where a
    stop request landed (``stopped_at``). ``calls`` are the prompts of each generate() call, in order."""

    wait = 20.0  # seconds it waits for the test before failing (only reached when something is broken)

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()  # set when a generate() call starts
        self.gate: threading.Event | None = None
        self.pause_after_step: int | None = None
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.stopped_at: int | None = None

    def batch_key(self, request: GenerationRequest) -> tuple:
        p = request.params
        return (p.width, p.height, p.steps, p.scheduler)

    def generate(self, requests: Sequence[GenerationRequest], *, on_step: Any = None,
                 should_stop: Any = None) -> list[list[Image.Image]]:
        self.calls.append([r.params.prompt for r in requests])
        self.entered.set()
        self.before_steps(requests, len(self.calls) - 1)
        total = requests[0].params.denoising_steps
        for step in range(1, total + 1):
            if should_stop is not None and should_stop():
                self.stopped_at = step
                return [[] for _ in requests]
            if on_step is not None:
                on_step(step, total, {"n": sum(r.params.count for r in requests)})
            if step == self.pause_after_step:
                self.paused.set()
                assert self.resume.wait(self.wait), "test never resumed"
        return self.images(requests, blue=7)

    def before_steps(self, requests: Sequence[GenerationRequest], call: int) -> None:
        """Where a subclass holds or fails call number ``call`` (0-based); here: wait for ``gate``."""
        if self.gate is not None:
            assert self.gate.wait(self.wait), "test never opened the gate"

    def preview(self, latents: Any) -> list[Image.Image]:
        return [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(latents["n"])]
