"""Downloading a picture a member attached to /imagine: bounded in time and size, checked off the event loop.

discord.py's ``Attachment.read()`` reads whatever the CDN sends, however long it takes; this reads from the
attachment's URL with aiohttp under a total timeout and stops at ``input_images.max_bytes`` (the declared size is
checked first, the bytes received too: a declared size can lie). The bytes are then checked and normalised by
:func:`bot.gate.input_image.normalize_input_image` in a thread.
"""

from __future__ import annotations

import asyncio

import aiohttp
import discord

from bot.config import InputImageSettings
from bot.gate.input_image import InputImage, InputImageError, check_declared, normalize_input_image, too_many_bytes
from bot.text import format_duration
from generation.settings import GenerationSettings

CHUNK_BYTES = 64 * 1024
RETRY = "please attach it again"


async def download(url: str, limits: InputImageSettings) -> bytes:
    """The bytes at ``url``, at most ``limits.max_bytes`` of them, within ``limits.download_timeout_seconds``."""
    timeout = aiohttp.ClientTimeout(total=limits.download_timeout_seconds)
    received = bytearray()
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            if response.status != 200:
                raise InputImageError(f"the attached image could not be downloaded from Discord (HTTP "
                                      f"{response.status}); {RETRY}")
            if response.content_length is not None and response.content_length > limits.max_bytes:
                raise too_many_bytes(response.content_length, limits)
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                received += chunk
                if len(received) > limits.max_bytes:
                    raise too_many_bytes(len(received), limits)
    except TimeoutError:
        raise InputImageError(f"downloading the attached image took longer than "
                              f"{format_duration(limits.download_timeout_seconds)}; {RETRY}") from None
    except aiohttp.ClientError:
        raise InputImageError(f"the attached image could not be downloaded from Discord; {RETRY}") from None
    return bytes(received)


def describe(attachment: discord.Attachment) -> dict[str, object]:
    """What the inbox keeps of an attachment: enough to download and check it again when the command is replayed
    after a crash (Discord's attachment URLs stay valid for hours; a replay comes within 15 minutes)."""
    return {"url": attachment.url, "filename": attachment.filename, "content_type": attachment.content_type,
            "size": attachment.size}


async def read_upload(upload: dict[str, object], limits: InputImageSettings,
                      settings: GenerationSettings) -> InputImage:
    """Check, download and normalise a picture :func:`describe` d; :class:`InputImageError` says what was wrong."""
    url, size = upload.get("url"), upload.get("size")
    if not isinstance(url, str) or not isinstance(size, int):
        raise InputImageError(f"the attached image could not be found again; {RETRY}")
    content_type = upload.get("content_type")
    check_declared(str(upload.get("filename") or ""), content_type if isinstance(content_type, str) else None,
                   size, limits)
    data = await download(url, limits)
    return await asyncio.to_thread(normalize_input_image, data, limits, settings)


async def read_attachment(attachment: discord.Attachment, limits: InputImageSettings,
                          settings: GenerationSettings) -> InputImage:
    """Check, download and normalise an attached picture; :class:`InputImageError` says what was wrong."""
    return await read_upload(describe(attachment), limits, settings)
