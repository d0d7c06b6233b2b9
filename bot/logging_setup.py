"""Structured logging for the bot: one line per event (``key=value`` or JSON), secrets redacted.

The bot token must never reach a log line, whatever logs it (our code, discord.py, aiohttp, aiosqlite's DEBUG
lines with every INSERT's parameters, a traceback), so redaction is a :class:`logging.Filter` installed on the
root handler: it rewrites the message, its arguments and the formatted traceback of every record before any
formatter sees them. Besides the secrets it is given, it hides anything shaped like a token
(:mod:`bot.redaction`): interaction tokens grant posting as the bot for 15 minutes. Libraries that print through
a handler of their own (transformers, diffusers) are routed through the root handler too.

Start-up should read as a few lines: Alembic's plugin list and its "Context impl" notes, and transformers'
torchvision notices, are shown at DEBUG only.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from bot.redaction import REDACTED, redact_token_shapes

# Logger -> what it says at start-up that means nothing to an admin (None: everything below WARNING).
_CHATTER: dict[str, tuple[str, ...] | None] = {
    "alembic.runtime.plugins": None,
    "alembic.runtime.migration": ("Context impl ", "Will assume "),
    "transformers.utils.import_utils": ("requires torchvision",),
}
# Libraries that attach a stderr handler of their own (unredacted, their own format) and stop propagation.
_SELF_HANDLING_LIBRARIES = ("transformers", "diffusers")

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
        return redact_token_shapes(text)

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


class _Chatter(logging.Filter):
    """Drops a logger's start-up chatter unless the root logger is at DEBUG (set on the logger, not a handler,
    so it also holds for records that never reach ours)."""

    def __init__(self, fragments: tuple[str, ...] | None) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        if self.fragments is None:
            return record.levelno >= logging.WARNING
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def _quiet_chatter() -> None:
    for name, fragments in _CHATTER.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Chatter) for f in logger.filters):
            logger.addFilter(_Chatter(fragments))


def adopt_library_loggers() -> None:
    """Send transformers' and diffusers' records through the root handler (redacted, our format), not their own.

    Call it after they are imported: each attaches its handler when first imported.
    """
    for name in _SELF_HANDLING_LIBRARIES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


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
    _quiet_chatter()
    adopt_library_loggers()
    # discord.py's HTTP/gateway chatter at DEBUG is noisy; keep it one level quieter than ours.
    logging.getLogger("discord").setLevel(max(logging.getLevelName(level), logging.INFO))
    _installed = handler
    return redactor
