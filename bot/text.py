"""Plain-text helpers every part of the bot uses: Discord's message limit, truncation, timestamps, durations.

They sit below the Discord layer so the gate (refusal sentences) and contests can word things the same way
without importing the cogs' formatting.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

MESSAGE_CONTENT_LIMIT = 2000  # Discord's limit for a message's content
TIMESTAMP_STYLES = frozenset("tTdDfFR")
ELLIPSIS = "…"


def truncate(text: str, limit: int, suffix: str = ELLIPSIS) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut with ``suffix``."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if len(text) <= limit:
        return text
    if limit <= len(suffix):
        return text[:limit]
    return text[: limit - len(suffix)].rstrip() + suffix


def discord_timestamp(dt: datetime | float, style: str = "R") -> str:
    """``<t:unix:style>``, which every member's client renders in their own time zone and language.

    Naive datetimes are taken as UTC (the database and the rate limiter store UTC), not as local time.
    """
    if style not in TIMESTAMP_STYLES:
        raise ValueError(f"unknown timestamp style {style!r}; expected one of {''.join(sorted(TIMESTAMP_STYLES))}")
    if isinstance(dt, datetime):
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        unix = dt.timestamp()
    else:
        unix = float(dt)
    return f"<t:{math.floor(unix)}:{style}>"


def format_duration(seconds: float) -> str:
    """Short human duration: ``40 s``, ``3 min``, ``1 h 5 min``, ``2 days``."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 60:
        return f"{round(seconds)} s"
    minutes = math.floor(seconds / 60 + 0.5)  # half up: 150 s is "3 min", not banker's "2 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days = math.floor(hours / 24 + 0.5)
    return f"{days} days"


def format_size(num_bytes: int) -> str:
    """Binary sizes the way Discord names its limits: 8 MiB is "8 MB", 10 MiB is "10 MB"."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if num_bytes >= scale:
            value = num_bytes / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{num_bytes} B"
