"""Discord's error bodies and the JSON responses the local server sends."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class DiscordError(Exception):
    """Raised by route handlers; becomes Discord's JSON error body ``{"code", "message", "errors"?}``."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


def unknown(kind: str, code: int) -> DiscordError:
    """404 ``Unknown <kind>`` with Discord's JSON code (10003 channel, 10008 message...)."""
    return DiscordError(404, code, f"Unknown {kind}")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with exactly ``Content-Type: application/json``: discord.py compares the header verbatim and treats
    ``application/json; charset=utf-8`` (aiohttp's default) as plain text."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return web.Response(body=body, status=status, headers={**(headers or {}), "Content-Type": "application/json"})


def error_response(status: int, code: int, message: str, errors: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return json_response(body, status=status, headers=headers)


def no_content() -> web.Response:
    return web.Response(status=204)


def as_int(value: Any) -> int:
    """A snowflake from a path or body; -1 (never an id) when it is not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
