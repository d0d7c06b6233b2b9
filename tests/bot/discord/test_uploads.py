"""Downloading an attached picture from a real HTTP server on 127.0.0.1: size caps (declared and received), the
timeout, a failing CDN, and the checks that run before anything is downloaded."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp import web
from PIL import Image

from bot.clock import utcnow
from bot.config import InputImageSettings
from bot.discord.replay import UPLOAD_LOST, options_of
from bot.discord.uploads import describe, download, read_attachment
from bot.gate.input_image import InputImageError
from bot.gate.submission import Options
from bot.storage.records import InboxRecord
from generation.settings import GenerationSettings
from tests.helpers import picture_png

pytestmark = pytest.mark.timeout(60)

LIMITS = InputImageSettings(max_bytes=50 * 1024, download_timeout_seconds=1.0)
PICTURE = picture_png((96, 80))


@pytest.fixture
async def cdn() -> AsyncIterator[tuple[str, list[str]]]:
    """A tiny CDN: ``/ok.png``, ``/missing``, ``/declared-big`` (Content-Length over the cap), ``/chunked-big``
    (no length, more bytes than the cap), ``/slow`` (never finishes). Yields the base URL and the paths served."""
    served: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=PICTURE, content_type="image/png")

    async def declared_big(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=b"\0" * (LIMITS.max_bytes + 1), content_type="image/png")

    async def chunked_big(request: web.Request) -> web.StreamResponse:
        served.append(request.path)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"\0" * 8192)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        served.append(request.path)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(PICTURE[:100])
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/ok.png", ok)
    app.router.add_get("/declared-big", declared_big)
    app.router.add_get("/chunked-big", chunked_big)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", served
    await runner.cleanup()


async def refusal(url: str) -> str:
    with pytest.raises(InputImageError) as caught:
        await download(url, LIMITS)
    return caught.value.message


async def test_a_picture_is_downloaded_whole(cdn: tuple[str, list[str]]) -> None:
    base, _ = cdn
    assert await download(f"{base}/ok.png", LIMITS) == PICTURE


async def test_too_big_is_refused_whether_declared_or_received(cdn: tuple[str, list[str]]) -> None:
    base, _ = cdn
    assert "more than the 50 KB this bot accepts" in await refusal(f"{base}/declared-big")
    assert "more than the 50 KB this bot accepts" in await refusal(f"{base}/chunked-big")


async def test_a_download_that_takes_too_long_is_given_up(cdn: tuple[str, list[str]]) -> None:
    base, _ = cdn
    assert "took longer than 1 s; please attach it again" in await refusal(f"{base}/slow")


async def test_a_failing_or_unreachable_cdn_says_so(cdn: tuple[str, list[str]]) -> None:
    base, _ = cdn
    assert "could not be downloaded from Discord (HTTP 404)" in await refusal(f"{base}/missing")
    assert "could not be downloaded from Discord; please attach it again" in await refusal("http://127.0.0.1:1/x")


async def test_an_attachment_is_checked_downloaded_and_normalised(cdn: tuple[str, list[str]]) -> None:
    base, served = cdn
    settings = GenerationSettings(model="tiny", min_size=64, max_size=256)
    attachment = SimpleNamespace(filename="in.png", content_type="image/png", size=len(PICTURE),
                                 url=f"{base}/ok.png")
    image = await read_attachment(attachment, LIMITS, settings)  # type: ignore[arg-type]
    assert (image.width, image.height, image.source_format) == (96, 80, "PNG")

    lying = SimpleNamespace(filename="notes.txt", content_type="text/plain", size=10, url=f"{base}/ok.png")
    with pytest.raises(InputImageError, match="is not an image"):
        await read_attachment(lying, LIMITS, settings)  # type: ignore[arg-type]
    huge = SimpleNamespace(filename="in.png", content_type="image/png", size=10**9, url=f"{base}/ok.png")
    with pytest.raises(InputImageError, match="more than the 50 KB"):
        await read_attachment(huge, LIMITS, settings)  # type: ignore[arg-type]
    assert served == ["/ok.png"]  # refused from what Discord declared: nothing downloaded


async def test_a_replayed_command_downloads_its_picture_again_or_says_why_not(cdn: tuple[str, list[str]]) -> None:
    """After a crash the inbox has the attachment's description (not its bytes): the replay downloads and checks
    it as the live command did; an entry from before (only a file name) or a picture gone from the CDN is one
    sentence for the member."""
    base, served = cdn
    settings = GenerationSettings(model="tiny", min_size=64, max_size=256)
    services = SimpleNamespace(settings=SimpleNamespace(input_images=LIMITS, generation=settings))
    attachment = SimpleNamespace(filename="in.png", content_type="image/png", size=len(PICTURE),
                                 url=f"{base}/ok.png")

    def entry(image: object) -> InboxRecord:
        return InboxRecord(id=1, interaction_id=9, application_id=5, token="t", guild_id=1, channel_id=2, user_id=3,
                           role_ids=(), options={"prompt": "a fox", "strength": 0.5, "image": image},
                           source="imagine", parent_job_id=None, received_at=utcnow())

    replayed = await options_of(services, entry(describe(attachment)))  # type: ignore[arg-type]
    assert isinstance(replayed, Options) and served == ["/ok.png"]
    assert replayed.values["prompt"] == "a fox" and replayed.values["strength"] == 0.5
    assert replayed.init_image is not None and Image.open(io.BytesIO(replayed.init_image)).size == (96, 80)

    gone = await options_of(services, entry({**describe(attachment), "url": f"{base}/missing"}))
    assert isinstance(gone, str) and "could not be downloaded from Discord (HTTP 404)" in gone
    assert await options_of(services, entry("in.png")) == UPLOAD_LOST
