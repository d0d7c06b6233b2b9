"""The one path every new job takes: validate -> content filter -> rate limit -> journal (-> queue).

/imagine, the 🔄 Rerun button and the 🔄 reaction all call :func:`submit`, so a rerun can never skip the filter
or the limits. It knows nothing about Discord objects (only ids), which keeps it testable with the real
storage, filter and limiter; the cogs turn its :class:`Refusal` into an ephemeral reply or a channel message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from bot.gate.content_filter import ContentFilter
from bot.gate.rate_limits import RateLimited, RateLimiter
from bot.gate.refusals import refusal_message
from bot.journal.job_journal import JobJournal
from bot.storage import repository
from bot.storage.db import Database
from bot.storage.records import JobRecord
from generation.request import RequestError, validate_request
from generation.settings import GenerationSettings
from generation.worker import JobHandle, QueueFullError

log = logging.getLogger(__name__)

RefusalKind = Literal["invalid", "filtered", "rate_limited", "queue_full"]


@dataclass(frozen=True)
class Options:
    """What the member asked for, as given: :class:`~generation.request.ImageParams` field names to values
    (a missing one is the configured default; no seed means a new random one), plus an uploaded picture.

    Only :func:`~generation.request.validate_request` knows the fields, so a new image parameter needs no edit here.
    """

    values: Mapping[str, Any]
    init_image: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, *, init_image: bytes | None = None, **values: Any) -> Options:
        """Options from keyword values; ``None`` values are left out (they mean "the default")."""
        return cls(MappingProxyType({k: v for k, v in values.items() if v is not None}), init_image)

    @classmethod
    def rerun_of(cls, job: JobRecord) -> Options:
        """The same prompt and parameters with a new random seed (what 🔄 means)."""
        return cls.of(**{**job.params.to_dict(), "seed": None})


@dataclass(frozen=True)
class Origin:
    """Who asked, where, and how to answer: the interaction token when there is one (followup webhook)."""

    user_id: int
    channel_id: int
    guild_id: int | None
    role_ids: tuple[int, ...] = ()
    interaction_id: int | None = None
    interaction_token: str | None = None
    application_id: int | None = None
    parent_job_id: int | None = None
    source: str = "imagine"  # imagine | rerun_button | reaction: recorded with moderation events


@dataclass(frozen=True)
class Refusal:
    """Why a job was not accepted, in a sentence the member can read (never the matched term)."""

    kind: RefusalKind
    message: str
    retry_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    job: JobRecord
    handle: JobHandle


@dataclass(frozen=True)
class Gate:
    """What the gate needs: the bounds to validate against, the filter and limits to apply, and the journal
    that accepts what passes (so the gate never needs the whole :class:`~bot.gate.Services`)."""

    settings: GenerationSettings
    db: Database
    content_filter: ContentFilter
    rate_limiter: RateLimiter
    journal: JobJournal


async def submit(gate: Gate, options: Options, origin: Origin) -> Accepted | Refusal:
    """Run the whole gate; on success the job is journalled (before it is queued) and its handle returned."""
    try:
        request = validate_request(gate.settings, requester_id=str(origin.user_id), init_image=options.init_image,
                                   **options.values)
    except RequestError as exc:
        return Refusal("invalid", refusal_message("invalid", message=exc.message), details={"message": exc.message})

    terms: tuple[str, ...] = ()
    default_rules: bool | None = None
    if origin.guild_id is not None:
        guild = await repository.get_guild_settings(gate.db, origin.guild_id)
        terms, default_rules = guild.blocked_terms, guild.default_filter_rules
    # The filter is CPU work (ICU, RE2, loops over the prompt): never on the event loop.
    prompt, negative = request.params.prompt, request.params.negative_prompt
    verdict = await asyncio.to_thread(gate.content_filter.check_request, prompt, negative,
                                      terms, default_rules=default_rules)
    if not verdict.allowed:
        refused_text = negative if verdict.field == "negative_prompt" else prompt
        await repository.record_moderation_event(
            gate.db, guild_id=origin.guild_id, channel_id=origin.channel_id, user_id=origin.user_id,
            prompt=refused_text, category=verdict.category, rule=verdict.rule, source=origin.source,
        )
        log.info("prompt refused by the content filter", extra={
            "user": origin.user_id, "guild": origin.guild_id, "category": verdict.category})
        return Refusal("filtered", refusal_message("filtered", category=verdict.category),
                       details={"category": verdict.category})

    try:
        reservation = await gate.rate_limiter.reserve(
            origin.guild_id, origin.user_id, request.params.count, role_ids=origin.role_ids
        )
    except RateLimited as exc:
        return Refusal("rate_limited", refusal_message("rate_limited", retry_at=exc.retry_at, reason=exc.reason),
                       retry_at=exc.retry_at, details={"reason": exc.reason})

    try:
        job, handle = await gate.journal.accept(
            request,
            guild_id=origin.guild_id,
            channel_id=origin.channel_id,
            user_id=origin.user_id,
            interaction_id=origin.interaction_id,
            interaction_token=origin.interaction_token,
            application_id=origin.application_id,
            parent_job_id=origin.parent_job_id,
            ledger_entry_id=reservation.entry_id,
        )
    except QueueFullError as exc:
        await gate.rate_limiter.release(reservation)
        return Refusal("queue_full", refusal_message("queue_full", message=exc.message),
                       details={"message": exc.message})
    except BaseException:
        await gate.rate_limiter.release(reservation)
        raise
    log.info("job accepted", extra={"job": job.id, "user": origin.user_id, "guild": origin.guild_id,
                                    "source": origin.source, "images": request.params.count})
    return Accepted(job, handle)
