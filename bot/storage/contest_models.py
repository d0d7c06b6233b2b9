"""Contest tables (revision 0002), on the same ``Base`` as the rest of the schema.

Kept out of ``models.py`` so the contest feature owns its schema; :mod:`bot.storage.schema` gathers both
into the one metadata Alembic and ``Database.create_all`` use.

Invariants live in the schema, not only in code, so concurrent clicks and restarts cannot break them:
one running contest per channel (partial unique index), one vote per member per entry (unique constraint),
one entry per image per contest, one result row per place.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from bot.storage.base import Base, UTCDateTime

CONTEST_STATES = ("running", "finished", "cancelled")


class Contest(Base):
    """A themed contest in one channel with its two deadlines (each also a row of the `timers` table)."""

    __tablename__ = "contests"
    __table_args__ = (
        CheckConstraint(f"state IN ({', '.join(repr(s) for s in CONTEST_STATES)})", name="state"),
        CheckConstraint("starts_at <= submit_ends_at AND submit_ends_at <= vote_ends_at", name="windows"),
        Index("uq_contests_running_channel", "channel_id", unique=True,
              sqlite_where=text("state = 'running'"), postgresql_where=text("state = 'running'")),
        Index("ix_contests_guild_state", "guild_id", "state"),
        Index("ix_contests_channel_id", "channel_id", "id"),  # a channel's latest contest (/contest status)
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    theme: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    submit_ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    vote_ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    max_entries: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="running")
    announcement_message_id: Mapped[int | None] = mapped_column(BigInteger)
    voting_announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    results_message_id: Mapped[int | None] = mapped_column(BigInteger)
    results_posted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ContestEntry(Base):
    """One image entered in a contest, and the message it was posted in (deleting that message withdraws it)."""

    __tablename__ = "contest_entries"
    __table_args__ = (
        UniqueConstraint("contest_id", "job_id", "image_index", name="uq_contest_entries_contest_job_image"),
        Index("ix_contest_entries_contest_user", "contest_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    contest_id: Mapped[int] = mapped_column(ForeignKey("contests.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    image_index: Mapped[int] = mapped_column(Integer, default=0)
    prompt: Mapped[str] = mapped_column(Text)
    message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ContestVote(Base):
    """A member's star for an entry; the count is ``COUNT(*)`` here, never Discord's reaction count."""

    __tablename__ = "contest_votes"
    __table_args__ = (UniqueConstraint("entry_id", "voter_id", name="uq_contest_votes_entry_voter"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("contest_entries.id", ondelete="CASCADE"))
    voter_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ContestResult(Base):
    """The final ranking, frozen when the contest ends: the leaderboard is summed from these rows."""

    __tablename__ = "contest_results"
    __table_args__ = (
        UniqueConstraint("contest_id", "place", name="uq_contest_results_contest_place"),
        Index("ix_contest_results_guild_user", "guild_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    contest_id: Mapped[int] = mapped_column(ForeignKey("contests.id", ondelete="CASCADE"))
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("contest_entries.id", ondelete="SET NULL"))
    guild_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    place: Mapped[int] = mapped_column(Integer)
    votes: Mapped[int] = mapped_column(Integer)
    points: Mapped[int] = mapped_column(Integer)
