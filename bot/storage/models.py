"""The job journal's tables: members, guild settings, jobs, images, moderation events, the rate-limit ledger.

Portable on purpose (SQLite and PostgreSQL): Discord snowflakes are BIGINT, surrogate keys are INTEGER so
SQLite's rowid autoincrement works, times are stored as naive UTC and handed back timezone-aware, and every
constraint is named (batch migrations on SQLite and ``ALTER`` on PostgreSQL need the names).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from bot.storage.base import Base, UTCDateTime

JOB_STATUSES = ("queued", "running", "done", "failed", "refused", "cancelled")
UNDELIVERED = text("message_id IS NULL")


class Member(Base):
    """A Discord user the bot has served: first/last seen and running totals."""

    __tablename__ = "members"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    total_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    total_images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class GuildSettings(Base):
    """Per-guild choices made by its admins at run time (they win over config.yaml's guild overrides)."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    blocked_terms: Mapped[list[str]] = mapped_column(JSON, default=list)
    nsfw_policy: Mapped[str | None] = mapped_column(String(16))
    images_per_window: Mapped[int | None] = mapped_column(Integer)
    window_seconds: Mapped[int | None] = mapped_column(Integer)
    max_queued_per_user: Mapped[int | None] = mapped_column(Integer)
    contest_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    # The shipped content rules for this guild: None follows content_filter.default_rules (bot/gate/content_filter.py).
    default_filter_rules: Mapped[bool | None] = mapped_column(Boolean)
    # The model /imagine uses here when none is chosen (a name from generation.models; None: the bot's default).
    default_model: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    """The journal: one row per accepted request, written before the worker sees it.

    One column per :class:`~generation.request.ImageParams` field, named the same (the repository maps them
    generically), so a new image parameter is a field there, a column here and a migration.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in JOB_STATUSES)})", name="status"),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_guild_user_status", "guild_id", "user_id", "status"),
        # /history: a member's newest jobs in a guild, read backwards from the end of the index.
        Index("ix_jobs_guild_user_id", "guild_id", "user_id", "id"),
        # Start-up re-delivery: only jobs without a result message are in it, so it stays small.
        Index("ix_jobs_undelivered", "status", "finished_at", sqlite_where=UNDELIVERED,
              postgresql_where=UNDELIVERED),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    interaction_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_token: Mapped[str | None] = mapped_column(Text)
    application_id: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="", server_default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    scheduler: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(255))
    strength: Mapped[float | None] = mapped_column(Float)
    upscale: Mapped[float | None] = mapped_column(Float)
    style: Mapped[str] = mapped_column(String(64), default="", server_default="")
    loras: Mapped[list[Any] | None] = mapped_column(JSON, default=list)
    parent_seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    prompt_truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    parent_image_index: Mapped[int | None] = mapped_column(Integer)  # the parent's image an upscale/vary starts from
    # img2img's starting image, relative to the images folder: the parent's PNG, or an upload under inputs/.
    init_image_path: Mapped[str | None] = mapped_column(String(1024))
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Remote workers (queue.backend: redis): the latest attempt a worker claimed, which worker, until when.
    # A result is recorded only if no newer attempt was claimed since (a slow worker's late copy is ignored).
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Image(Base):
    """One stored PNG; the row stays after its file is pruned (``pruned``) so history and stats survive."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("job_id", "index", name="uq_images_job_id_index"),
        # `db prune`: the files still stored that are older than a date, without reading the pruned ones.
        Index("ix_images_pruned_created_at", "pruned", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pruned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ModerationEvent(Base):
    """A refused prompt: who, where, which rule; the prompt only as a hash and a short excerpt."""

    __tablename__ = "moderation_events"
    __table_args__ = (Index("ix_moderation_events_guild_created", "guild_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    prompt_excerpt: Mapped[str] = mapped_column(String(200), default="", server_default="")
    category: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(32), default="prompt", server_default="prompt")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RateLimitEntry(Base):
    """Images a member was granted, at a time: the sliding window is counted from these rows.

    ``job_id`` is empty between :meth:`RateLimiter.reserve` and the job being journalled; such a pending
    entry also counts as a queued job for a short while so that concurrent requests see each other.
    ``interaction_id`` (revision 0010): the command the grant was made for, so the replay of a command whose
    process died before journalling it replaces that grant instead of charging the member twice.
    """

    __tablename__ = "rate_limit_ledger"
    __table_args__ = (Index("ix_rate_limit_ledger_member_at", "guild_id", "user_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    images: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    interaction_id: Mapped[int | None] = mapped_column(BigInteger)



# --- maintained aggregates (revision 0006) ------------------------------------------------------------------
# /stats reads these instead of counting a guild's whole history; the repository updates them in the same
# transaction as the job, image or moderation event they count. Direct messages (no guild) are not counted.


class GuildStatusCount(Base):
    """How many of a guild's jobs are in each status."""

    __tablename__ = "guild_status_counts"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class GuildMemberCount(Base):
    """A member's jobs and images in one guild: the guild's member count and its busiest members."""

    __tablename__ = "guild_member_counts"
    __table_args__ = (Index("ix_guild_member_counts_guild_images", "guild_id", "images", "user_id"),)

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class GuildCounter(Base):
    """A guild's totals that belong to no member row: images stored and prompts refused."""

    __tablename__ = "guild_counters"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    moderation_events: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class InboxEntry(Base):
    """An acknowledged command not yet turned into a job: written BEFORE the deferral, so a process killed
    between "thinking…" and the journal still has it; replayed through the gate at the next start while its
    token is valid. Deleted in the same transaction that journals its job (or once a refusal was answered)."""

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("interaction_id", name="uq_inbox_interaction_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    interaction_id: Mapped[int] = mapped_column(BigInteger)
    application_id: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[str] = mapped_column(Text)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    role_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    options: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(32), default="imagine", server_default="imagine")
    parent_job_id: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
