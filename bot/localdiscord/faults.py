"""Injected REST failures: rate limits (with Discord's headers) and server errors on chosen routes."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from bot.localdiscord.errors import error_response, json_response


@dataclass
class FaultRule:
    """An injected failure: the next ``times`` requests matching ``method`` and ``pattern`` get ``status``."""

    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float
    is_global: bool = False
    hits: int = 0

    @property
    def remaining(self) -> int:
        return self.times - self.hits


def compile_path_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """``/webhooks/*/*`` or ``/webhooks/{app}/{token}``: ``*``/``{name}`` match one segment, ``**`` anything.

    Matched against the path without the ``/api/v10`` prefix; a compiled regex is used as is (fullmatch).
    """
    if isinstance(pattern, re.Pattern):
        return pattern
    pattern = pattern.split("?", 1)[0]
    pattern = re.sub(r"^/api/v\d+", "", pattern)
    out = []
    for token in re.split(r"(\*\*|\*|\{[^}/]+\})", pattern):
        if token == "**":
            out.append(".*")
        elif token == "*" or (token.startswith("{") and token.endswith("}")):
            out.append("[^/]+")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


class Faults:
    """The rules tests installed; the router asks :meth:`take` before handling each request."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def fail_route(self, method: str, path_pattern: str | re.Pattern[str], status: int = 429, *, times: int = 1,
                   retry_after: float = 0.2, is_global: bool = False) -> FaultRule:
        """Answer the next ``times`` matching requests with ``status`` (429 with Discord's rate-limit body
        and headers, or e.g. 500/502). ``path_pattern`` is e.g. ``"/webhooks/*/*"`` (see
        :func:`compile_path_pattern`). The returned rule's ``hits`` counts injected failures."""
        rule = FaultRule(method.upper(), compile_path_pattern(path_pattern), status, times, retry_after, is_global)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        for rule in self.rules:
            if rule.remaining > 0 and rule.method in (method, "*") and rule.pattern.fullmatch(path):
                rule.hits += 1
                return rule
        return None

    @staticmethod
    def response(rule: FaultRule) -> web.Response:
        if rule.status == 429:
            headers = {
                "Retry-After": str(max(1, round(rule.retry_after))),
                "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                "X-RateLimit-Bucket": "localdiscord-" + uuid.uuid4().hex[:8],
                "X-RateLimit-Scope": "shared" if not rule.is_global else "global",
                # discord.py treats a 429 without Via as a Cloudflare ban; Discord's API responses carry it.
                "Via": "1.1 google",
            }
            if rule.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {"message": "You are being rate limited.", "retry_after": rule.retry_after,
                    "global": rule.is_global, "code": 0}
            return json_response(body, status=429, headers=headers)
        return error_response(rule.status, 0, f"{rule.status}: injected failure")
