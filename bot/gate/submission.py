"""The one path every new job takes: validate -> content filter -> rate limit -> journal (-> queue).

/imagine, the 🔄 Rerun button, the 🔄 reaction and the Upscale/Vary buttons all call :func:`submit`, so none of
them can skip the filter or the limits (an upscale or a variation costs its one image). It knows nothing about
Discord objects (only ids), which keeps it testable with the real storage, filter and limiter; the cogs turn its
:class:`Refusal` into an ephemeral reply or a channel message. Starting images stored on disk (a parent's PNG, an
earlier upload) are read here, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

from bot.gate.aspect import member_values
from bot.gate.content_filter import ContentFilter
from bot.gate.rate_limits import RateLimited, RateLimiter
from bot.gate.refusals import refusal_message
from bot.journal.job_journal import JobJournal
from bot.storage import repository
from bot.storage.db import Database
from bot.storage.images import read_stored
from bot.storage.records import GuildSettingsRecord, JobRecord
from generation.request import (
    GenerationRequest,
    ImageParams,
    RequestError,
    upscale_request,
    validate_request,
    variation_request,
)
from generation.settings import GenerationSettings
from generation.worker import JobHandle, QueueFullError

if TYPE_CHECKING:
    from bot.ops.metrics import BotMetrics

log = logging.getLogger(__name__)

RefusalKind = Literal["invalid", "filtered", "rate_limited", "queue_full"]
Derivation = Literal["upscale", "vary_subtle", "vary_strong"]
DERIVATIONS: frozenset[str] = frozenset(get_args(Derivation))
GONE_STARTING_IMAGE = "the starting image of that job is no longer stored, so it cannot be used again"


@dataclass(frozen=True)
class Options:
    """What the member asked for, as given: :class:`~generation.request.ImageParams` field names to values
    (a missing one is the configured default; no seed means a new random one), plus a starting picture: its
    bytes (an upload), or the stored file it is (``init_image_path``, read by :func:`submit`).

    ``typed``: the member typed these in /imagine, so trailing prompt flags and ``aspect`` are read
    (:func:`bot.gate.aspect.member_values`); stored parameters (reruns, buttons) never are. ``derive``: an upscale or
    a variation of image ``image_index`` of the job whose parameters ``values`` are.
    Only :func:`~generation.request.validate_request` knows the fields, so a new image parameter needs no edit here.
    """

    values: Mapping[str, Any]
    init_image: bytes | None = field(default=None, repr=False)
    init_image_path: str | None = None
    typed: bool = False
    derive: Derivation | None = None
    image_index: int = 0

    @classmethod
    def of(cls, *, init_image: bytes | None = None, **values: Any) -> Options:
        """Options from keyword values; ``None`` values are left out (they mean "the default")."""
        return cls(MappingProxyType({k: v for k, v in values.items() if v is not None}), init_image)

    @classmethod
    def typed_by_member(cls, *, init_image: bytes | None = None, **values: Any) -> Options:
        """/imagine's options as the member typed them (prompt flags and ``aspect`` still to be read)."""
        plain = cls.of(init_image=init_image, **values)
        return cls(plain.values, init_image, typed=True)

    @classmethod
    def rerun_of(cls, job: JobRecord) -> Options:
        """The same prompt and parameters (and starting image) with a new random seed (what 🔄 means)."""
        plain = cls.of(**{**job.params.to_dict(), "seed": None})
        return cls(plain.values, init_image_path=job.init_image_path)

    @classmethod
    def derived_from(cls, job: JobRecord, index: int, image_path: str, derive: Derivation) -> Options:
        """Upscale or vary image ``index`` of ``job``, whose stored PNG is ``image_path``."""
        return cls(MappingProxyType(job.params.to_dict()), init_image_path=image_path, derive=derive,
                   image_index=index)


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
    parent_image_index: int | None = None  # which image of the parent an upscale or variation starts from
    source: str = "imagine"  # imagine | rerun_button | reaction | upscale_button | vary_button: moderation events


@dataclass(frozen=True)
class Refusal:
    """Why a job was not accepted, in a sentence the member can read (never the matched term)."""

    kind: RefusalKind
    message: str
    retry_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)
    images: int = 0  # how many images the refused request asked for (0 when it was not valid)


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
    metrics: BotMetrics | None = None


def _invalid(message: str) -> Refusal:
    return Refusal("invalid", refusal_message("invalid", message=message), details={"message": message})


def _request(gate: Gate, options: Options, requester_id: str, init_image: bytes | None,
             guild: GuildSettingsRecord | None) -> GenerationRequest:
    """The validated request; :class:`RequestError` says what is wrong."""
    settings = gate.settings
    if options.derive is not None:
        assert init_image is not None  # derived options always name the parent's stored image
        parent = ImageParams.from_dict(options.values)
        if options.derive == "upscale":
            return upscale_request(settings, parent, options.image_index, init_image, requester_id=requester_id)
        return variation_request(settings, parent, options.image_index, init_image, requester_id=requester_id,
                                 strong=options.derive == "vary_strong")
    values = member_values(settings, options.values) if options.typed else dict(options.values)
    if "model" not in values and guild is not None and guild.default_model in settings.model_sources():
        values["model"] = guild.default_model  # the server's choice; a model since removed from the config is not
    return validate_request(settings, requester_id=requester_id, init_image=init_image, **values)


async def submit(gate: Gate, options: Options, origin: Origin) -> Accepted | Refusal:
    """Run the whole gate; on success the job is journalled (before it is queued) and its handle returned."""
    outcome = await _submit(gate, options, origin)
    if isinstance(outcome, Refusal) and gate.metrics is not None:
        gate.metrics.refused(outcome.kind, outcome.images)
    return outcome


async def _submit(gate: Gate, options: Options, origin: Origin) -> Accepted | Refusal:
    guild = await repository.get_guild_settings(gate.db, origin.guild_id) if origin.guild_id is not None else None
    init_image = options.init_image
    if init_image is None and options.init_image_path is not None:
        try:
            init_image = await read_stored(gate.journal.images_dir, options.init_image_path)
        except OSError:
            return _invalid(GONE_STARTING_IMAGE)
    try:
        request = _request(gate, options, str(origin.user_id), init_image, guild)
    except RequestError as exc:
        return _invalid(exc.message)

    terms: tuple[str, ...] = ()
    default_rules: bool | None = None
    if guild is not None:
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
                       details={"category": verdict.category}, images=request.params.count)

    try:
        reservation = await gate.rate_limiter.reserve(
            origin.guild_id, origin.user_id, request.params.count, role_ids=origin.role_ids,
            interaction_id=origin.interaction_id,
        )
    except RateLimited as exc:
        return Refusal("rate_limited", refusal_message("rate_limited", retry_at=exc.retry_at, reason=exc.reason),
                       retry_at=exc.retry_at, details={"reason": exc.reason}, images=request.params.count)

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
            parent_image_index=origin.parent_image_index,
            init_image_path=options.init_image_path if request.init_image is not None else None,
            ledger_entry_id=reservation.entry_id,
        )
    except QueueFullError as exc:
        await gate.rate_limiter.release(reservation)
        return Refusal("queue_full", refusal_message("queue_full", message=exc.message),
                       details={"message": exc.message}, images=request.params.count)
    except BaseException:
        await gate.rate_limiter.release(reservation)
        raise
    log.info("job accepted", extra={"job": job.id, "user": origin.user_id, "guild": origin.guild_id,
                                    "source": origin.source, "images": request.params.count})
    return Accepted(job, handle)
