"""Frozen records the contest repository returns (no ORM object leaves ``bot.storage``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ContestState = Literal["running", "finished", "cancelled"]


@dataclass(frozen=True)
class ContestRecord:
    id: int
    guild_id: int
    channel_id: int
    theme: str
    created_by: int
    starts_at: datetime
    submit_ends_at: datetime
    vote_ends_at: datetime
    max_entries: int | None
    state: ContestState
    announcement_message_id: int | None
    voting_announced_at: datetime | None
    finished_at: datetime | None
    results_message_id: int | None
    results_posted_at: datetime | None


@dataclass(frozen=True)
class EntryRecord:
    id: int
    contest_id: int
    user_id: int
    job_id: int | None
    image_index: int
    prompt: str
    message_id: int | None
    submitted_at: datetime


@dataclass(frozen=True)
class TalliedEntry:
    """An entry with its vote count as counted from ``contest_votes`` (and its image file, when still stored)."""

    entry: EntryRecord
    votes: int
    image_path: str | None


@dataclass(frozen=True)
class ResultRecord:
    contest_id: int
    entry_id: int | None
    guild_id: int
    user_id: int
    place: int
    votes: int
    points: int


@dataclass(frozen=True)
class EntryCandidate:
    """What the entry rules need to know about a job's image, read in the same transaction as the insert."""

    job_id: int
    image_index: int
    job_user_id: int
    job_guild_id: int | None
    job_status: str
    job_queued_at: datetime
    prompt: str
    image_exists: bool
    image_nsfw: bool
    entries_by_member: int
    already_entered: bool


@dataclass(frozen=True)
class VoteChange:
    """The outcome of a vote or unvote: the entry and its new count from the database."""

    entry: EntryRecord
    contest: ContestRecord
    votes: int
