"""The sentences a member reads when the gate refuses a request: what was wrong and what to do now."""

from __future__ import annotations

from datetime import datetime

from bot.text import MESSAGE_CONTENT_LIMIT, discord_timestamp, format_duration, truncate

REFUSAL_KINDS = frozenset(
    {"filter", "rate_limit", "too_many_queued", "validation", "queue_full", "withheld", "cancelled", "failure"}
)
# The names bot/submission.py uses for its Refusal kinds.
_KIND_ALIASES = {"filtered": "filter", "rate_limited": "rate_limit", "invalid": "validation"}

_FILTER_REASONS = {
    "blocked term": "it contains a term that is not allowed here",
    "blocked pattern": "it matches a pattern that is not allowed here",
    "blocked combination": "it combines words that are not allowed together here",
    "blocked negative term": "its negative prompt contains a term that is not allowed here",
}


def _per_window(window_seconds: int) -> str:
    named = {60: "per minute", 3600: "per hour", 86400: "per day", 604800: "per week"}
    if window_seconds in named:
        return named[window_seconds]
    return f"every {format_duration(window_seconds)}"


def refusal_message(kind: str, **details: object) -> str:
    """A short, friendly reply saying why a request was not run and what the member can do.

    Kinds and their details (``filtered``, ``rate_limited`` and ``invalid`` are accepted as aliases):

    - ``filter``: ``category`` (a :class:`FilterVerdict` category; the term itself is never shown)
    - ``rate_limit``: ``limit`` and ``window_seconds`` (or ``reason``), ``retry_at`` (datetime)
    - ``too_many_queued``: ``limit`` (jobs a member may have waiting)
    - ``validation``: ``message`` (``RequestError.message``)
    - ``queue_full``: optional ``message`` (``QueueFullError.message``)
    - ``withheld``: ``count`` and ``total`` images held back by the safety checker
    - ``cancelled``: no details
    - ``failure``: optional ``job_id``
    """
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in REFUSAL_KINDS:
        raise ValueError(f"unknown refusal kind {kind!r}; expected one of {', '.join(sorted(REFUSAL_KINDS))}")
    if kind == "filter":
        reason = _FILTER_REASONS.get(str(details.get("category")), "it breaks this server's content rules")
        text = f"Your prompt was refused: {reason}. Please rephrase it and try again."
    elif kind == "rate_limit":
        retry_at = details.get("retry_at")
        when = f"try again {discord_timestamp(retry_at)}" if isinstance(retry_at, datetime) else "try again later"
        limit, window = details.get("limit"), details.get("window_seconds")
        if isinstance(limit, int) and isinstance(window, int):
            noun = "image" if limit == 1 else "images"
            text = f"You can make {limit} {noun} {_per_window(window)}; {when}."
        elif details.get("reason"):
            reason = str(details["reason"]).strip().rstrip(".")
            reason = reason[:1].upper() + reason[1:]
            # RateLimited reasons for queued jobs already say when to retry.
            text = f"{reason}." if "try again" in reason else f"{reason}; {when}."
        else:
            text = f"You have reached your image limit; {when}."
    elif kind == "too_many_queued":
        limit = details.get("limit")
        if isinstance(limit, int):
            noun = "job" if limit == 1 else "jobs"
            text = f"You already have {limit} {noun} waiting; wait for one to finish (or cancel one) and try again."
        else:
            text = "You already have jobs waiting; wait for one to finish (or cancel one) and try again."
    elif kind == "validation":
        message = str(details.get("message") or "some of the options are out of range").rstrip(".")
        text = f"That request can't be run: {message}. Adjust it and try again."
    elif kind == "queue_full":
        message = str(details.get("message") or "The queue is full right now").rstrip(".")
        # QueueFullError's own message may already say when to retry: do not say it twice.
        text = f"{message}." if "try again" in message.lower() else f"{message}. Please try again in a minute."
    elif kind == "withheld":
        count, total = details.get("count"), details.get("total")
        if isinstance(count, int) and isinstance(total, int) and total > 1:
            verb = "was" if count == 1 else "were"
            text = (f"{count} of {total} images {verb} withheld by the safety checker. "
                    "Try a different prompt or seed.")
        else:
            text = "The image was withheld by the safety checker. Try a different prompt or seed."
    elif kind == "cancelled":
        text = "Your job was cancelled."
    else:
        job_id = details.get("job_id")
        ref = f" (job `{job_id}`)" if job_id else ""
        text = (f"Something went wrong while generating{ref}. Please try again; "
                "if it keeps failing, tell a server admin.")
    return truncate(text, MESSAGE_CONTENT_LIMIT)
