"""What a secret looks like, so that logs and error messages can hide one even when nobody said it was secret.

Known secrets (the configured bot token) are replaced wherever they appear; on top of that, anything shaped
like a Discord bot token, an interaction token (they let anyone post as the bot for 15 minutes), a token in a
webhook URL, an ``Authorization: Bot`` header or the password of a database URL is hidden too. A leaf module:
both :mod:`bot.logging_setup` and :mod:`bot.config` use it.
"""

from __future__ import annotations

import base64
import binascii
import re

REDACTED = "[REDACTED]"

# /webhooks/<application id>/<interaction token> and /interactions/<id>/<token>/callback in URLs.
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)([A-Za-z0-9_.\-]{20,})")
# "Authorization: Bot xxx" style headers, should a library ever log one.
_BOT_HEADER = re.compile(r"(\bBot\s+)([A-Za-z0-9_.\-]{20,})")
# Interaction tokens are base64 of "interaction:<id>:..." (Discord's, and the local server's alike).
_INTERACTION_TOKEN = re.compile(r"aW50ZXJhY3Rpb24[A-Za-z0-9_\-]{16,}")
# Bot tokens: base64 of the bot's user id, a timestamp part and an HMAC part, separated by dots.
_BOT_TOKEN = re.compile(r"(?<![A-Za-z0-9_\-])([A-Za-z0-9_\-]{16,40})\.([A-Za-z0-9_\-]{4,10})\.([A-Za-z0-9_\-]{20,})")
# scheme://user:password@host: the password part.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)([^@\s/]+)(@)")


def _is_user_id(part: str) -> bool:
    """The first part of a bot token decodes to the bot's numeric user id (ordinary dotted words do not)."""
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return False
    return 15 <= len(decoded) <= 21 and decoded.isdigit()


def _hide_bot_token(match: re.Match[str]) -> str:
    return REDACTED if _is_user_id(match.group(1)) else match.group(0)


def redact_token_shapes(text: str) -> str:
    """Hide everything in ``text`` that looks like a token or a URL password (no list of secrets needed)."""
    text = _URL_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BOT_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _INTERACTION_TOKEN.sub(REDACTED, text)
    text = _BOT_TOKEN.sub(_hide_bot_token, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


def looks_secret(text: str) -> bool:
    """True when ``text`` holds something token-shaped or a URL with a password."""
    return redact_token_shapes(text) != text


def url_password(url: str) -> str | None:
    """The password of a ``scheme://user:password@host`` URL, or None."""
    match = _URL_PASSWORD.search(url)
    return match.group(2) if match else None


__all__ = ["REDACTED", "looks_secret", "redact_token_shapes", "url_password"]
