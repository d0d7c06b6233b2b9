"""Structured logging for the bot: one line per event (``key=value`` or JSON), secrets redacted.

The bot token must never reach a log line, whatever logs it (our code, discord.py, aiohttp, a traceback), so
redaction is a :class:`logging.Filter` installed on the root handler: it rewrites the message, its arguments and
the formatted traceback of every record before any formatter sees them. Interaction tokens (which grant posting
as the bot for 15 minutes) are redacted by pattern for the same reason.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "[REDACTED]"

# /webhooks/<application id>/<interaction token> and /interactions/<id>/<token>/callback in URLs.
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)([A-Za-z0-9_.\-]{20,})")
# "Authorization: Bot xxx" style headers, should a library ever log one.
_BOT_HEADER = re.compile(r"(\bBot\s+)([A-Za-z0-9_.\-]{20,})")

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys() | {"message", "asctime"}
)


class RedactingFilter(logging.Filter):
    """Replaces every configured secret (and token-shaped URL parts) in a record with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, secret: str | None) -> None:
        """Secrets shorter than 8 characters are ignored: redacting them would mangle ordinary words."""
        if secret and len(secret) >= 8 and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _URL_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)
        return _BOT_HEADER.sub(lambda m: m.group(1) + REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must still be logged, and still redacted
            message = str(record.msg)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Fields passed with ``extra={...}``: they become key=value pairs / JSON keys."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=INFO logger=bot.discord.delivery msg="posted result" job=12`` — greppable and still readable."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [f"ts={ts}", f"level={record.levelname}", f"logger={record.name}", f"msg={_quote(record.getMessage())}"]
        parts += [f"{key}={_quote(value)}" for key, value in _extras(record).items()]
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += f" exc={_quote(record.exc_text)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            payload[key] = value if isinstance(value, int | float | bool | type(None)) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        return json.dumps(payload, ensure_ascii=False)


_installed: logging.Handler | None = None


def setup_logging(
    level: str = "INFO", *, json_lines: bool = False, secrets: Iterable[str | None] = (), stream: TextIO | None = None
) -> RedactingFilter:
    """Install one redacting handler on the root logger (replacing ours from a previous call).

    Returns the filter so a caller can add secrets learnt later (for example a token set after start).
    """
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    root.addHandler(handler)
    root.setLevel(level)
    # discord.py's HTTP/gateway chatter at DEBUG is noisy; keep it one level quieter than ours.
    logging.getLogger("discord").setLevel(max(logging.getLevelName(level), logging.INFO))
    _installed = handler
    return redactor
