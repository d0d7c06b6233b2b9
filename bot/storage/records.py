"""Plain frozen records returned by the repository, so no ORM object leaks out of ``bot.storage``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from generation.request import ImageParams

JobStatus = Literal["queued", "running", "done", "failed", "refused", "cancelled"]
UNFINISHED: tuple[JobStatus, ...] = ("queued", "running")


@dataclass(frozen=True)
class JobRecord:
    """One /imagine (or rerun) as journalled: enough to run it again and deliver it after a restart."""

    id: int
    guild_id: int | None
    channel_id: int
    user_id: int
    interaction_id: int | None
    interaction_token: str | None
    application_id: int | None
    message_id: int | None
    params: ImageParams  # everything that decides the pixels, exactly as accepted
    status: JobStatus
    error: str | None
    parent_job_id: int | None
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    prompt_truncated: bool = False

    @property
    def worker_job_id(self) -> str:
        """The id the generation worker knows this job by."""
        return str(self.id)


@dataclass(frozen=True)
class ImageRecord:
    id: int
    job_id: int
    index: int
    seed: int
    path: str
    sha256: str
    size_bytes: int
    width: int
    height: int
    nsfw: bool
    pruned: bool
    message_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class GuildSettingsRecord:
    guild_id: int
    blocked_terms: tuple[str, ...]
    nsfw_policy: str | None
    images_per_window: int | None
    window_seconds: int | None
    max_queued_per_user: int | None
    contest_channel_id: int | None
    default_filter_rules: bool | None = None  # the shipped content rules; None: content_filter.default_rules decides


@dataclass(frozen=True)
class MemberStats:
    user_id: int
    jobs: int
    images: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class GuildStats:
    """What a guild has asked for: jobs per status, images made, distinct members, busiest members."""

    guild_id: int
    jobs_by_status: dict[str, int]
    images: int
    members: int
    top_members: tuple[tuple[int, int], ...]  # (user_id, images), busiest first
    moderation_events: int


@dataclass(frozen=True)
class ModerationEventRecord:
    id: int
    guild_id: int | None
    channel_id: int | None
    user_id: int
    prompt_sha256: str
    prompt_excerpt: str
    category: str | None
    rule: str | None
    source: str
    created_at: datetime
