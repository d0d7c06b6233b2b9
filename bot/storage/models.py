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
)
from sqlalchemy.orm import Mapped, mapped_column

from bot.storage.base import Base, UTCDateTime

JOB_STATUSES = ("queued", "running", "done", "failed", "refused", "cancelled")


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
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Image(Base):
    """One stored PNG; the row stays after its file is pruned (``pruned``) so history and stats survive."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_images_job_id_index"),)

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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


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
    """

    __tablename__ = "rate_limit_ledger"
    __table_args__ = (Index("ix_rate_limit_ledger_member_at", "guild_id", "user_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    images: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)

