"""The one path every new job takes: validate -> content filter -> rate limit -> journal (-> queue).

/imagine, the 🔄 Rerun button and the 🔄 reaction all call :func:`submit`, so a rerun can never skip the filter
or the limits. It knows nothing about Discord objects (only ids), which keeps it testable with the real
storage, filter and limiter; the cogs turn its :class:`Refusal` into an ephemeral reply or a channel message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from bot.gate.filter_settings import GuildFilterSettings, guild_filter_settings
from bot.gate.rate_limits import RateLimited
from bot.gate.refusals import refusal_message
from bot.services import Services
from bot.storage import repository
from bot.storage.records import JobRecord
from generation.request import RequestError, validate_request
from generation.worker import JobHandle, QueueFullError

log = logging.getLogger(__name__)

RefusalKind = Literal["invalid", "filtered", "rate_limited", "queue_full"]


@dataclass(frozen=True)
class Options:
    """What the member asked for; ``None`` means the configured default (a new random seed for ``seed``)."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    count: int = 1
    scheduler: str | None = None

    @classmethod
    def rerun_of(cls, job: JobRecord) -> Options:
        """The same prompt and parameters with a new random seed (what 🔄 means)."""
        return cls(prompt=job.prompt, negative_prompt=job.negative_prompt, seed=None, steps=job.steps,
                   guidance=job.guidance, width=job.width, height=job.height, count=job.count,
                   scheduler=job.scheduler)


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


async def submit(services: Services, options: Options, origin: Origin) -> Accepted | Refusal:
    """Run the whole gate; on success the job is journalled (before it is queued) and its handle returned."""
    try:
        request = validate_request(
            services.settings.generation,
            prompt=options.prompt,
            negative_prompt=options.negative_prompt,
            seed=options.seed,
            steps=options.steps,
            guidance=options.guidance,
            width=options.width,
            height=options.height,
            count=options.count,
            scheduler=options.scheduler,
            requester_id=str(origin.user_id),
        )
    except RequestError as exc:
        return Refusal("invalid", refusal_message("invalid", message=exc.message), details={"message": exc.message})

    guild = GuildFilterSettings()
    if origin.guild_id is not None:
        guild = await guild_filter_settings(services.db, origin.guild_id)
    # The filter is CPU work (ICU, RE2, loops over the prompt): never on the event loop.
    verdict = await asyncio.to_thread(services.content_filter.check_request, request.prompt, request.negative_prompt,
                                      guild.blocked_terms, default_rules=guild.default_rules)
    if not verdict.allowed:
        refused_text = request.negative_prompt if verdict.field == "negative_prompt" else request.prompt
        await repository.record_moderation_event(
            services.db, guild_id=origin.guild_id, channel_id=origin.channel_id, user_id=origin.user_id,
            prompt=refused_text, category=verdict.category, rule=verdict.rule, source=origin.source,
        )
        log.info("prompt refused by the content filter", extra={
            "user": origin.user_id, "guild": origin.guild_id, "category": verdict.category})
        return Refusal("filtered", refusal_message("filtered", category=verdict.category),
                       details={"category": verdict.category})

    try:
        reservation = await services.rate_limiter.reserve(
            origin.guild_id, origin.user_id, request.count, role_ids=origin.role_ids
        )
    except RateLimited as exc:
        return Refusal("rate_limited", refusal_message("rate_limited", retry_at=exc.retry_at, reason=exc.reason),
                       retry_at=exc.retry_at, details={"reason": exc.reason})

    try:
        job, handle = await services.journal.accept(
            request,
            guild_id=origin.guild_id,
            channel_id=origin.channel_id,
            user_id=origin.user_id,
            interaction_id=origin.interaction_id,
            interaction_token=origin.interaction_token,
            application_id=origin.application_id,
            parent_job_id=origin.parent_job_id,
            reservation=reservation,
        )
    except QueueFullError as exc:
        await services.rate_limiter.release(reservation)
        return Refusal("queue_full", refusal_message("queue_full", message=exc.message),
                       details={"message": exc.message})
    except BaseException:
        await services.rate_limiter.release(reservation)
        raise
    log.info("job accepted", extra={"job": job.id, "user": origin.user_id, "guild": origin.guild_id,
                                    "source": origin.source, "images": request.count})
    return Accepted(job, handle)
