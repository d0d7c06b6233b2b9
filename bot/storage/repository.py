"""Every query the bot makes, as plain async functions returning frozen records (never ORM objects).

Only SQLAlchemy constructs are used (no dialect-specific SQL text), so SQLite and PostgreSQL behave alike.
Status changes are conditional: a job that already finished is never moved back by a late event.

Exact under concurrency on both databases: a read-then-write transaction locks the row it read
(``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite ``write=True`` sessions hold the database's write lock
from BEGIN), and counters are incremented in SQL, never read, added to and written back.

/stats counts come from maintained aggregates (``guild_status_counts``, ``guild_member_counts``,
``guild_counters``) updated in the same transaction as the rows they count, so they never drift from them and
reading them costs the same at any history size. Rows of several counters are always touched in one order
(status counts, member counts, guild counters; keys sorted) so concurrent PostgreSQL transactions cannot
deadlock on them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, false, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import utcnow
from bot.storage.base import Base, UTCDateTime
from bot.storage.db import Database
from bot.storage.models import (
    GuildCounter,
    GuildMemberCount,
    GuildSettings,
    GuildStatusCount,
    Image,
    InboxEntry,
    Job,
    Member,
    ModerationEvent,
    RateLimitEntry,
)
from bot.storage.records import (
    UNFINISHED,
    GuildSettingsRecord,
    GuildStats,
    ImageRecord,
    JobRecord,
    JobStatus,
    MemberStats,
    ModerationEventRecord,
)
from generation.request import ImageParams

R = TypeVar("R")
EXCERPT_CHARS = 80


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Marks a keyword of :func:`update_guild_settings` as "leave as is" (None means "clear")."""


def _record(cls: type[R], row: Any) -> R:
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(ImageParams))


def _params_of(row: Job) -> ImageParams:
    values = {name: getattr(row, name) for name in PARAM_FIELDS}
    values["loras"] = tuple((name, float(weight)) for name, weight in values["loras"] or ())
    return ImageParams(**values)


def _param_columns(params: ImageParams) -> dict[str, Any]:
    return params.to_dict()  # column names are the field names; loras as a JSON list


def _job(row: Job) -> JobRecord:
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(JobRecord) if f.name != "params"}
    return JobRecord(params=_params_of(row), **values)


def _image(row: Image) -> ImageRecord:
    return _record(ImageRecord, row)


# --- maintained aggregates ----------------------------------------------------------------------------------


async def _add_to_counters(session: AsyncSession, model: type[Base], keys: Sequence[str],
                           rows: Iterable[dict[str, Any]]) -> None:
    """Add each row's other columns to the counter row with the same ``keys``, creating it at zero first.

    One ``INSERT ... ON CONFLICT DO UPDATE`` (both databases have it) with the rows in key order, so two
    transactions lock shared counter rows in the same order.
    """
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        if key in merged:
            for name, value in row.items():
                if name not in keys:
                    merged[key][name] += value
        else:
            merged[key] = dict(row)
    values = [merged[key] for key in sorted(merged)
              if any(value for name, value in merged[key].items() if name not in keys)]
    if not values:
        return
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(model).values(values)
    increments = {name: getattr(model, name) + getattr(stmt.excluded, name) for name in values[0] if name not in keys}
    await session.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=increments))


async def _count_statuses(session: AsyncSession, guild_id: int | None, changes: dict[str, int]) -> None:
    if guild_id is not None:
        await _add_to_counters(session, GuildStatusCount, ("guild_id", "status"),
                               [{"guild_id": guild_id, "status": status, "jobs": n} for status, n in changes.items()])


async def _count_member(session: AsyncSession, guild_id: int | None, user_id: int, *, jobs: int = 0,
                        images: int = 0) -> None:
    if guild_id is not None:
        await _add_to_counters(session, GuildMemberCount, ("guild_id", "user_id"),
                               [{"guild_id": guild_id, "user_id": user_id, "jobs": jobs, "images": images}])


async def _count_guild(session: AsyncSession, guild_id: int | None, *, images: int = 0,
                       moderation_events: int = 0) -> None:
    if guild_id is not None:
        await _add_to_counters(session, GuildCounter, ("guild_id",), [
            {"guild_id": guild_id, "images": images, "moderation_events": moderation_events}])


# --- members -----------------------------------------------------------------------------------------------


async def _touch_member(session: AsyncSession, user_id: int, jobs: int, images: int, at: datetime) -> Member:
    member = await session.get(Member, user_id, with_for_update=True)
    if member is None:
        try:
            async with session.begin_nested():
                member = Member(user_id=user_id, first_seen=at, last_seen=at, total_jobs=0, total_images=0)
                session.add(member)
        except IntegrityError:  # another process created it first (PostgreSQL without a write lock)
            member = await session.get(Member, user_id, populate_existing=True, with_for_update=True)
            assert member is not None
    member.last_seen = max(member.last_seen, at)
    member.total_jobs += jobs
    member.total_images += images
    await session.flush()
    return member


def _member_stats(member: Member) -> MemberStats:
    return MemberStats(user_id=member.user_id, jobs=member.total_jobs, images=member.total_images,
                       first_seen=member.first_seen, last_seen=member.last_seen)


async def touch_member(db: Database, user_id: int, *, jobs: int = 0, images: int = 0,
                       at: datetime | None = None) -> MemberStats:
    """Note that a member was seen (first/last seen) and add to their totals."""
    async with db.session(write=True) as session:
        return _member_stats(await _touch_member(session, user_id, jobs, images, at or utcnow()))


async def member_stats(db: Database, user_id: int) -> MemberStats | None:
    async with db.session() as session:
        member = await session.get(Member, user_id)
        return _member_stats(member) if member else None


# --- jobs --------------------------------------------------------------------------------------------------


async def create_job(
    db: Database,
    *,
    guild_id: int | None,
    channel_id: int,
    user_id: int,
    params: ImageParams,
    interaction_id: int | None = None,
    interaction_token: str | None = None,
    application_id: int | None = None,
    parent_job_id: int | None = None,
    parent_image_index: int | None = None,
    init_image_path: str | None = None,
    ledger_entry_id: int | None = None,
) -> JobRecord:
    """Journal a new job (status ``queued``), count it for the member, and link its rate-limit entry.

    The interaction's inbox entry (if any) is deleted in the same transaction: after the commit the command
    exists exactly once, as this job, so a replay at the next start cannot run it a second time.
    """
    now = utcnow()
    async with db.session(write=True) as session:
        job = Job(
            guild_id=guild_id, channel_id=channel_id, user_id=user_id, interaction_id=interaction_id,
            interaction_token=interaction_token, application_id=application_id, **_param_columns(params),
            status="queued", parent_job_id=parent_job_id, parent_image_index=parent_image_index,
            init_image_path=init_image_path, queued_at=now, prompt_truncated=False,
        )
        session.add(job)
        await session.flush()
        if ledger_entry_id is not None:
            await session.execute(update(RateLimitEntry).where(RateLimitEntry.id == ledger_entry_id)
                                  .values(job_id=job.id))
        if interaction_id is not None:
            await session.execute(delete(InboxEntry).where(InboxEntry.interaction_id == interaction_id))
        await _touch_member(session, user_id, 1, params.count, now)
        await _count_statuses(session, guild_id, {"queued": 1})
        await _count_member(session, guild_id, user_id, jobs=1)
        return _job(job)


_ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "queued": ("running",),  # a running job interrupted by a restart starts over
    "running": ("queued", "running"),
    "done": ("queued", "running"),
    "failed": ("queued", "running"),
    "refused": ("queued",),
    "cancelled": ("queued", "running"),
}


async def _transition(db: Database, job_id: int, status: JobStatus, **values: Any) -> JobRecord:
    """Move a job to ``status`` only from the states that may lead there; return the job as it now is.

    The row is locked while its old status is read, so the status counters move exactly once per change.
    """
    async with db.session(write=True) as session:
        job = await session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"no job {job_id}")
        old = job.status
        if old not in _ALLOWED_FROM[status]:
            return _job(job)
        await session.execute(update(Job).where(Job.id == job_id).values(status=status, **values)
                              .execution_options(synchronize_session=False))
        if old != status:
            await _count_statuses(session, job.guild_id, {old: -1, status: 1})
        await session.refresh(job)
        return _job(job)


async def mark_running(db: Database, job_id: int) -> JobRecord:
    return await _transition(db, job_id, "running", started_at=utcnow())


def _started_by(now: datetime) -> Any:
    """A job that finished before its start was seen (a very fast run) started at the latest now."""
    return func.coalesce(Job.started_at, literal(now, UTCDateTime))


async def mark_done(db: Database, job_id: int, *, prompt_truncated: bool = False) -> JobRecord:
    now = utcnow()
    return await _transition(db, job_id, "done", finished_at=now, started_at=_started_by(now), error=None,
                             prompt_truncated=prompt_truncated)


async def record_attempt(db: Database, job_id: int, *, attempt: int, worker_id: str,
                         lease_expires_at: datetime) -> bool:
    """A remote worker claimed the job as ``attempt``: note who and until when, unless the job already finished
    or a newer attempt was recorded (claims can be reported out of order). True when the row changed."""
    async with db.session(write=True) as session:
        result = await session.execute(
            update(Job).where(Job.id == job_id, Job.status.in_(UNFINISHED), Job.attempt < attempt)
            .values(attempt=attempt, worker_id=worker_id, lease_expires_at=lease_expires_at)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)


async def mark_done_fenced(db: Database, job_id: int, *, attempt: int, worker_id: str | None = None,
                           prompt_truncated: bool = False) -> JobRecord | None:
    """:func:`mark_done` for a result made by ``attempt`` (on ``worker_id``, which is recorded with it, as the
    claim may not be written yet); None (nothing written) when the job already finished or a newer attempt was
    claimed since: the result is a second or late copy and must not be recorded again."""
    now = utcnow()
    placed = {"attempt": attempt, "worker_id": worker_id} if worker_id else {}
    async with db.session(write=True) as session:
        job = await session.get(Job, job_id, with_for_update=True)  # the old status, read under the row lock
        if job is None or job.status not in _ALLOWED_FROM["done"] or job.attempt > attempt:
            return None
        old = job.status
        await session.execute(
            update(Job).where(Job.id == job_id)
            .values(status="done", finished_at=now, started_at=_started_by(now), error=None,
                    prompt_truncated=prompt_truncated, **placed)
            .execution_options(synchronize_session=False)
        )
        await _count_statuses(session, job.guild_id, {old: -1, "done": 1})  # /stats counts move with it
        await session.refresh(job)
        return _job(job)


async def mark_failed(db: Database, job_id: int, error: str) -> JobRecord:
    return await _transition(db, job_id, "failed", finished_at=utcnow(), error=error)


async def mark_refused(db: Database, job_id: int, reason: str | None = None) -> JobRecord:
    return await _transition(db, job_id, "refused", finished_at=utcnow(), error=reason)


async def mark_cancelled(db: Database, job_id: int) -> JobRecord:
    return await _transition(db, job_id, "cancelled", finished_at=utcnow())


async def cancel_unstarted(db: Database, job_id: int) -> JobRecord:
    """Cancel a job that never started, and give its rate-limit grant back, in one transaction.

    The member's slot is free the moment /cancel answers: the job no longer counts as queued and its images no
    longer count in their window (nothing was generated). A job that already started keeps its ledger entry.
    """
    from bot.storage.models import RateLimitEntry

    async with db.session(write=True) as session:
        job = await session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.status == "queued":
            await session.execute(
                update(Job).where(Job.id == job_id).values(status="cancelled", finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            await _count_statuses(session, job.guild_id, {"queued": -1, "cancelled": 1})
            await session.refresh(job)
        if job.status == "cancelled" and job.started_at is None:
            await session.execute(delete(RateLimitEntry).where(RateLimitEntry.job_id == job_id))
        return _job(job)


async def requeue(db: Database, job_id: int) -> JobRecord:
    """Put a job left ``running`` by a crash back to ``queued`` (it starts over)."""
    return await _transition(db, job_id, "queued", started_at=None)


async def set_job_message(db: Database, job_id: int, message_id: int | None) -> JobRecord:
    """Remember the message that shows the job's result (for buttons and reactions on it)."""
    async with db.session(write=True) as session:
        job = await session.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        job.message_id = message_id
        await session.flush()
        return _job(job)


async def clear_interaction_token(db: Database, job_id: int) -> None:
    """Forget a job's interaction token once its result was delivered (or it ended): nothing needs it any more."""
    async with db.session(write=True) as session:
        await session.execute(update(Job).where(Job.id == job_id, Job.interaction_token.is_not(None))
                              .values(interaction_token=None))


async def clear_interaction_tokens_queued_before(db: Database, before: datetime) -> int:
    """Forget the interaction tokens of jobs queued before ``before`` (Discord no longer takes them)."""
    async with db.session(write=True) as session:
        result = await session.execute(update(Job).where(Job.interaction_token.is_not(None), Job.queued_at < before)
                                       .values(interaction_token=None))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def get_job(db: Database, job_id: int) -> JobRecord | None:
    async with db.session() as session:
        job = await session.get(Job, job_id)
        return _job(job) if job else None


async def find_job_by_message(db: Database, message_id: int) -> JobRecord | None:
    """The job whose result message, or one of whose images' posted message, is ``message_id``."""
    async with db.session() as session:
        posted = select(Image.job_id).where(Image.message_id == message_id)
        stmt = (select(Job).where(or_(Job.message_id == message_id, Job.id.in_(posted)))
                .order_by(Job.id.desc()).limit(1))
        job = (await session.scalars(stmt)).first()
        return _job(job) if job else None


async def jobs_for_user(db: Database, guild_id: int | None, user_id: int, limit: int = 10) -> list[JobRecord]:
    """A member's most recent jobs in a guild, newest first."""
    async with db.session() as session:
        stmt = (select(Job).where(Job.guild_id == guild_id, Job.user_id == user_id)
                .order_by(Job.id.desc()).limit(limit))
        return [_job(j) for j in await session.scalars(stmt)]


async def unfinished_jobs(db: Database) -> list[JobRecord]:
    """Jobs left queued or running (by a crash or restart), in the order they were accepted."""
    async with db.session() as session:
        stmt = select(Job).where(Job.status.in_(UNFINISHED)).order_by(Job.id)
        return [_job(j) for j in await session.scalars(stmt)]


async def undelivered_jobs(db: Database, *, finished_after: datetime) -> list[JobRecord]:
    """Jobs ``done`` since ``finished_after`` whose saved images were never posted (the process died between
    saving and posting), oldest first. A posted result keeps its message id on its images even when the post is
    deleted later (only the job's is cleared), so a result is never posted twice this way."""
    async with db.session() as session:
        posted = select(Image.id).where(Image.job_id == Job.id, Image.message_id.is_not(None)).exists()
        # "IS NOT true", which no index serves, rather than "= false": SQLite would otherwise look the rows up
        # by the (pruned, created_at) index, reading every stored image for each job instead of the job's few.
        saved = select(Image.id).where(Image.job_id == Job.id, Image.pruned.is_not(True)).exists()
        stmt = (select(Job).where(Job.status == "done", Job.message_id.is_(None), Job.finished_at >= finished_after,
                                  saved, ~posted).order_by(Job.id))
        return [_job(j) for j in await session.scalars(stmt)]


async def count_active_jobs(db: Database, guild_id: int | None, user_id: int) -> int:
    """Jobs queued or running for a member."""
    async with db.session() as session:
        stmt = select(func.count(Job.id)).where(Job.guild_id == guild_id, Job.user_id == user_id,
                                                 Job.status.in_(UNFINISHED))
        return int(await session.scalar(stmt) or 0)


# --- images ------------------------------------------------------------------------------------------------


async def add_image(
    db: Database,
    job_id: int,
    *,
    index: int,
    seed: int,
    path: str,
    sha256: str,
    size_bytes: int,
    width: int,
    height: int,
    nsfw: bool = False,
) -> ImageRecord:
    """Record a saved PNG; a job that runs again after a restart replaces its earlier row for ``index``."""
    now = utcnow()
    async with db.session(write=True) as session:
        row = (await session.scalars(select(Image).where(Image.job_id == job_id, Image.index == index))).first()
        if row is None:
            row = Image(job_id=job_id, index=index, message_id=None)
            session.add(row)
            job = await session.get_one(Job, job_id)
            await _count_member(session, job.guild_id, job.user_id, images=1)
            await _count_guild(session, job.guild_id, images=1)
        row.seed, row.path, row.sha256, row.size_bytes = seed, path, sha256, size_bytes
        row.width, row.height, row.nsfw, row.pruned, row.created_at = width, height, nsfw, False, now
        await session.flush()
        return _image(row)


async def images_for_job(db: Database, job_id: int) -> list[ImageRecord]:
    async with db.session() as session:
        stmt = select(Image).where(Image.job_id == job_id).order_by(Image.index)
        return [_image(i) for i in await session.scalars(stmt)]


async def get_image(db: Database, image_id: int) -> ImageRecord | None:
    async with db.session() as session:
        row = await session.get(Image, image_id)
        return _image(row) if row else None


async def set_image_message(db: Database, job_id: int, message_id: int | None,
                            indexes: Iterable[int] | None = None) -> list[ImageRecord]:
    """Remember the message an image (all of the job's, or ``indexes``) was posted in."""
    async with db.session(write=True) as session:
        stmt = update(Image).where(Image.job_id == job_id).values(message_id=message_id)
        if indexes is not None:
            stmt = stmt.where(Image.index.in_(list(indexes)))
        await session.execute(stmt.execution_options(synchronize_session=False))
        rows = await session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index))
        return [_image(i) for i in rows]


async def set_image_nsfw(db: Database, image_id: int, nsfw: bool) -> None:
    async with db.session(write=True) as session:
        await session.execute(update(Image).where(Image.id == image_id).values(nsfw=nsfw))


async def stored_images(db: Database, *, older_than: datetime | None = None) -> list[ImageRecord]:
    """Images whose file should exist (not pruned), optionally only those created before a time, oldest first.

    ``pruned = false`` (not ``IS false``) so the (pruned, created_at) index serves it without reading the
    pruned rows, which are most of a long history.
    """
    async with db.session() as session:
        stmt = select(Image).where(Image.pruned == false()).order_by(Image.created_at, Image.id)
        if older_than is not None:
            stmt = stmt.where(Image.created_at < older_than)
        return [_image(i) for i in await session.scalars(stmt)]


async def images_of_jobs(db: Database, job_ids: Sequence[int]) -> list[ImageRecord]:
    """Every image row (pruned or not) of the given jobs; in chunks, under SQLite's bound-parameter limit."""
    ids = list(job_ids)
    records: list[ImageRecord] = []
    async with db.session() as session:
        for start in range(0, len(ids), 500):
            stmt = select(Image).where(Image.job_id.in_(ids[start:start + 500])).order_by(Image.id)
            records.extend(_image(i) for i in await session.scalars(stmt))
    return records


async def all_image_paths(db: Database) -> set[str]:
    """Every path a row names (images, pruned or not, and jobs' starting images): a file on disk not in here is an
    orphan."""
    async with db.session() as session:
        inputs = select(Job.init_image_path).where(Job.init_image_path.is_not(None))
        return set(await session.scalars(select(Image.path))) | set(await session.scalars(inputs))


async def stale_input_paths(db: Database, prefix: str, *, older_than: datetime) -> list[str]:
    """Uploaded starting images (paths under ``prefix``) that only jobs queued before ``older_than`` name, none of
    them still queued or running: their files may go (an upload is stored once for every job that uses it)."""
    async with db.session() as session:
        unfinished = select(Job.init_image_path).where(Job.status.in_(UNFINISHED), Job.init_image_path.is_not(None))
        stmt = (select(Job.init_image_path).where(Job.init_image_path.startswith(prefix, autoescape=True),
                                                  Job.init_image_path.not_in(unfinished))
                .group_by(Job.init_image_path).having(func.max(Job.queued_at) < older_than)
                .order_by(Job.init_image_path))
        return [path for path in await session.scalars(stmt) if path is not None]


async def mark_images_pruned(db: Database, image_ids: Sequence[int]) -> int:
    """Mark rows whose file is gone (pruned or lost); in chunks, to stay under SQLite's bound-parameter limit."""
    marked = 0
    ids = list(image_ids)
    for start in range(0, len(ids), 500):
        async with db.session(write=True) as session:
            result = await session.execute(update(Image).where(Image.id.in_(ids[start:start + 500]))
                                           .values(pruned=True))
            marked += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return marked


# --- moderation --------------------------------------------------------------------------------------------


async def record_moderation_event(
    db: Database,
    *,
    guild_id: int | None,
    user_id: int,
    prompt: str,
    category: str | None,
    rule: str | None,
    channel_id: int | None = None,
    source: str = "prompt",
) -> ModerationEventRecord:
    """Log a refusal; the prompt is kept only as a hash and a short excerpt."""
    async with db.session(write=True) as session:
        event = ModerationEvent(
            guild_id=guild_id, channel_id=channel_id, user_id=user_id,
            prompt_sha256=hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
            prompt_excerpt=prompt[:EXCERPT_CHARS], category=category, rule=rule, source=source,
            created_at=utcnow(),
        )
        session.add(event)
        await session.flush()
        await _count_guild(session, guild_id, moderation_events=1)
        return _record(ModerationEventRecord, event)


async def moderation_events(db: Database, guild_id: int | None, limit: int = 20) -> list[ModerationEventRecord]:
    """A guild's most recent refusals, newest first."""
    async with db.session() as session:
        stmt = (select(ModerationEvent).where(ModerationEvent.guild_id == guild_id)
                .order_by(ModerationEvent.id.desc()).limit(limit))
        return [_record(ModerationEventRecord, e) for e in await session.scalars(stmt)]


# --- guild settings ----------------------------------------------------------------------------------------


def guild_record(row: GuildSettings | None, guild_id: int) -> GuildSettingsRecord:
    if row is None:
        return GuildSettingsRecord(guild_id=guild_id, blocked_terms=(), nsfw_policy=None, images_per_window=None,
                                   window_seconds=None, max_queued_per_user=None, contest_channel_id=None,
                                   default_filter_rules=None, default_model=None)
    return GuildSettingsRecord(
        guild_id=row.guild_id, blocked_terms=tuple(row.blocked_terms or ()), nsfw_policy=row.nsfw_policy,
        images_per_window=row.images_per_window, window_seconds=row.window_seconds,
        max_queued_per_user=row.max_queued_per_user, contest_channel_id=row.contest_channel_id,
        default_filter_rules=row.default_filter_rules, default_model=row.default_model,
    )


async def get_guild_settings(db: Database, guild_id: int) -> GuildSettingsRecord:
    """A guild's settings; a guild never configured gets the empty record (config.yaml decides)."""
    async with db.session() as session:
        return guild_record(await session.get(GuildSettings, guild_id), guild_id)


async def update_guild_settings(
    db: Database,
    guild_id: int,
    *,
    add_terms: Iterable[str] = (),
    remove_terms: Iterable[str] = (),
    nsfw_policy: str | None = UNSET,
    images_per_window: int | None = UNSET,
    window_seconds: int | None = UNSET,
    max_queued_per_user: int | None = UNSET,
    contest_channel_id: int | None = UNSET,
    default_filter_rules: bool | None = UNSET,
    default_model: str | None = UNSET,
) -> GuildSettingsRecord:
    """Change what is given (``None`` clears an override); blocked terms are trimmed, de-duplicated, sorted."""
    async with db.session(write=True) as session:
        row = await session.get(GuildSettings, guild_id, with_for_update=True)
        if row is None:
            try:
                async with session.begin_nested():
                    row = GuildSettings(guild_id=guild_id, blocked_terms=[], updated_at=utcnow())
                    session.add(row)
            except IntegrityError:
                row = await session.get(GuildSettings, guild_id, populate_existing=True, with_for_update=True)
                assert row is not None
        terms = {t for t in (row.blocked_terms or [])}
        terms |= {t.strip() for t in add_terms if t.strip()}
        removed = {t.strip().casefold() for t in remove_terms}
        row.blocked_terms = sorted(t for t in terms if t.casefold() not in removed)
        for name, value in (("nsfw_policy", nsfw_policy), ("images_per_window", images_per_window),
                            ("window_seconds", window_seconds), ("max_queued_per_user", max_queued_per_user),
                            ("contest_channel_id", contest_channel_id),
                            ("default_filter_rules", default_filter_rules), ("default_model", default_model)):
            if value is not UNSET:
                setattr(row, name, value)
        row.updated_at = utcnow()
        await session.flush()
        return guild_record(row, guild_id)


async def add_blocked_terms(db: Database, guild_id: int, terms: Iterable[str]) -> tuple[str, ...]:
    return (await update_guild_settings(db, guild_id, add_terms=terms)).blocked_terms


async def remove_blocked_terms(db: Database, guild_id: int, terms: Iterable[str]) -> tuple[str, ...]:
    return (await update_guild_settings(db, guild_id, remove_terms=terms)).blocked_terms


async def list_blocked_terms(db: Database, guild_id: int) -> tuple[str, ...]:
    return (await get_guild_settings(db, guild_id)).blocked_terms


# --- stats -------------------------------------------------------------------------------------------------


async def guild_stats(db: Database, guild_id: int, *, top: int = 5) -> GuildStats:
    """Counts for a guild's /stats: jobs per status, images stored, distinct members, busiest members.

    Read from the maintained aggregates: a handful of rows whatever the size of the guild's history.
    """
    async with db.session() as session:
        by_status = {status: int(n) for status, n in await session.execute(
            select(GuildStatusCount.status, GuildStatusCount.jobs)
            .where(GuildStatusCount.guild_id == guild_id, GuildStatusCount.jobs > 0))}
        totals = await session.get(GuildCounter, guild_id)
        members = int(await session.scalar(
            select(func.count()).select_from(GuildMemberCount).where(GuildMemberCount.guild_id == guild_id)) or 0)
        top_rows = await session.execute(
            select(GuildMemberCount.user_id, GuildMemberCount.images)
            .where(GuildMemberCount.guild_id == guild_id, GuildMemberCount.images > 0)
            .order_by(GuildMemberCount.images.desc(), GuildMemberCount.user_id).limit(top))
        return GuildStats(guild_id=guild_id, jobs_by_status=by_status, images=totals.images if totals else 0,
                          members=members, top_members=tuple((int(u), int(n)) for u, n in top_rows),
                          moderation_events=totals.moderation_events if totals else 0)
