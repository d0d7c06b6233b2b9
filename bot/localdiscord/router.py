"""REST v10 request handling: the route table, authentication, body parsing, injected faults and the log.

Route modules (``routes_*.py``) register handlers with :meth:`Router.add`; a handler takes a :class:`Call`
and returns a response or raises :class:`~bot.localdiscord.errors.DiscordError`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.localdiscord.errors import DiscordError, error_response
from bot.localdiscord.faults import Faults, compile_path_pattern
from bot.localdiscord.models import Refusal, RestCall, Upload, Waiter
from bot.localdiscord.settings import ServerSettings

_log = logging.getLogger(__name__)


@dataclass
class Call:
    """One parsed REST request handed to a route handler."""

    request: web.Request
    params: dict[str, str]
    json: Any
    files: list[Upload]

    @property
    def query(self) -> Any:
        return self.request.query


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass
class Route:
    method: str
    regex: re.Pattern[str]
    handler: Handler
    auth: str  # "bot": the bot token is required; "webhook": optional, but checked when sent; "none"


class Router:
    """Matches ``/api/v10/...`` requests to handlers and records every call in :attr:`rest_log`, and every
    4xx it answered (injected faults aside) in ``refusals``."""

    def __init__(self, settings: ServerSettings, faults: Faults, waiter: Waiter, refusals: list[Refusal]) -> None:
        self.settings = settings
        self.faults = faults
        self.waiter = waiter
        self.refusals = refusals
        self.routes: list[Route] = []
        self.rest_log: list[RestCall] = []
        self.unknown_routes: list[tuple[str, str]] = []

    def add(self, method: str, path: str, handler: Handler, auth: str = "bot") -> None:
        """``path`` like ``/channels/{channel_id}/messages``; ``{name}`` captures one segment into params."""
        regex = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path))
        self.routes.append(Route(method, regex, handler, auth))

    def calls(self, method: str | None = None, path_pattern: str | None = None) -> list[RestCall]:
        """REST calls the bot made, filtered by method and a :func:`compile_path_pattern` pattern."""
        regex = compile_path_pattern(path_pattern) if path_pattern else None
        return [c for c in self.rest_log if (method is None or c.method == method.upper())
                and (regex is None or regex.fullmatch(c.path))]

    def recent(self) -> str:
        """The last REST calls, for timeout messages."""
        recent = ", ".join(f"{c.method} {c.path}->{c.status}" for c in self.rest_log[-8:])
        return f"; last REST calls: [{recent}]"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        match = re.match(r"^/api/v\d+(/.*)$", request.path)
        sub = match.group(1) if match else request.path
        method = request.method
        route, params = None, {}
        for candidate in self.routes:
            found = candidate.regex.fullmatch(sub)
            if found and candidate.method == method:
                route, params = candidate, found.groupdict()
                break
        call = RestCall(method, sub, 0, time.time(), dict(request.query))
        self.rest_log.append(call)
        try:
            if match is None or route is None:
                self.unknown_routes.append((method, sub))
                _log.warning("localdiscord: unknown route %s %s", method, request.path)
                raise DiscordError(404, 0, "404: Not Found")
            auth = request.headers.get("Authorization")
            needs_auth = route.auth == "bot" or (route.auth == "webhook" and auth is not None)
            if needs_auth and auth != f"Bot {self.settings.token}":
                raise DiscordError(401, 0, "401: Unauthorized")
            fault = self.faults.take(method, sub)
            if fault is not None:
                call.status = fault.status
                return self.faults.response(fault)
            body, files = await parse_body(request)
            call.json, call.files = body, [f[1] for f in files]
            response = await route.handler(Call(request, params, body, files))
        except DiscordError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.errors)
            if 400 <= exc.status < 500:
                self.refusals.append(Refusal(method, sub, exc.status, exc.code, exc.message, exc.errors))
                _log.info("localdiscord refused %s", self.refusals[-1])
        except Exception:
            _log.exception("localdiscord: handler for %s %s failed", method, sub)
            response = error_response(500, 0, "500: Internal Server Error")
        call.status = response.status
        _log.debug("localdiscord %s %s -> %s (%.1f ms)", method, sub, response.status,
                   (time.monotonic() - started) * 1000)
        self.waiter.notify()
        return response


async def parse_body(request: web.Request) -> tuple[Any, list[Upload]]:
    """JSON, or multipart with ``payload_json`` and ``files[n]`` parts."""
    files: list[Upload] = []
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            name = part.name or ""  # type: ignore[union-attr]
            raw = await part.read()  # type: ignore[union-attr]
            if name == "payload_json":
                payload = json.loads(raw.decode())
                continue
            index_match = re.fullmatch(r"files\[(\d+)\]|file(\d*)", name)
            if index_match:
                index = int(index_match.group(1) or index_match.group(2) or len(files))
                content_type = part.headers.get("Content-Type")  # type: ignore[union-attr]
                files.append((index, part.filename or f"file{index}", bytes(raw), content_type))  # type: ignore
        return payload, files
    if not request.can_read_body:
        return None, files
    raw = await request.read()
    if not raw:
        return None, files
    try:
        return json.loads(raw), files
    except ValueError:
        raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None
