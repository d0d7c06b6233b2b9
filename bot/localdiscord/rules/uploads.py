"""Uploaded files: at most 10 a message, a size limit per file, and one for the whole request.

https://discord.com/developers/docs/reference#uploading-files: "up to 10 files"; the per-file limit of a server
without boosts is 10 MiB (``attachment_size_limit`` of an interaction says so too); the request as a whole
must stay under 25 MiB. Discord answers a too large upload with 413 and JSON code 40005.
"""

from __future__ import annotations

from bot.localdiscord.errors import DiscordError
from bot.localdiscord.models import Upload
from bot.localdiscord.rules.form import FormErrors

MAX_FILES = 10
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024
REQUEST_LIMIT = 25 * 1024 * 1024


def too_large(what: str) -> DiscordError:
    return DiscordError(413, 40005, f"Request entity too large: {what}")


def check_uploads(files: list[Upload], *, kept: int, file_limit: int, request_limit: int) -> None:
    """``kept``: attachments an edit keeps, which count toward the 10 but were uploaded before."""
    for _, filename, data, _ in files:
        if len(data) > file_limit:
            raise too_large(f"{filename} is {len(data)} bytes; the limit is {file_limit} bytes a file")
    total = sum(len(f[2]) for f in files)
    if total > request_limit:
        raise too_large(f"the files add up to {total} bytes; the limit is {request_limit} bytes a request")
    if kept + len(files) > MAX_FILES:
        errors = FormErrors()
        errors.add(("attachments",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
        errors.raise_if_any()
