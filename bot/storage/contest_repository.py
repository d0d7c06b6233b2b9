"""Every contest query, as plain async functions returning the frozen records of ``contest_records``.

Rule checks that must be exact under concurrency (max entries, double votes, the voting window) run *inside*
the write transaction that inserts the row: the caller passes a ``validate`` callback that raises to refuse,
so two simultaneous clicks can never both pass a check made before either wrote. On SQLite the write session
holds the database's write lock; on PostgreSQL the contest row is locked (``FOR UPDATE`` to enter, finish or
cancel, ``FOR SHARE`` to vote, so votes do not wait for each other but none slips past the final count).
The unique constraints are the last line of defence (a check forgotten in code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.contest_models import Contest, ContestEntry, ContestResult, ContestVote
from bot.storage.contest_records import (
    ContestRecord,
    EntryCandidate,
    EntryRecord,
    ResultRecord,
    TalliedEntry,
    VoteChange,
)
from bot.storage.db import Database
from bot.storage.models import Image, Job
from bot.storage.timer_records import NewTimer, TimerRecord
from bot.storage.timer_repository import insert_timer

R = TypeVar("R")


class ContestConflict(Exception):
    """The channel already has a running contest (the partial unique index said so)."""


class NotFound(LookupError):
    """The contest or entry no longer exists (deleted message, cancelled contest)."""


def _record(cls: type[R], row: Any) -> R:
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def _contest(row: Contest) -> ContestRecord:
    return _record(ContestRecord, row)


def _entry(row: ContestEntry) -> EntryRecord:
    return _record(EntryRecord, row)


def _result(row: ContestResult) -> ResultRecord:
    return _record(ResultRecord, row)


# --- contests ----------------------------------------------------------------------------------------------


async def create_contest(db: Database, *, guild_id: int, channel_id: int, theme: str, created_by: int,
                         starts_at: datetime, submit_ends_at: datetime, vote_ends_at: datetime,
                         max_entries: int | None,
                         timers: Callable[[ContestRecord], Iterable[NewTimer]] = lambda _: (),
                         ) -> tuple[ContestRecord, list[TimerRecord]]:
    """Store a running contest and the timers ``timers(contest)`` names, in one transaction.

    Together or not at all: a contest stored without its deadlines would never end. Raises
    :class:`ContestConflict` when the channel already runs one.
    """
    try:
        async with db.session(write=True) as session:
            row = Contest(guild_id=guild_id, channel_id=channel_id, theme=theme, created_by=created_by,
                          starts_at=starts_at, submit_ends_at=submit_ends_at, vote_ends_at=vote_ends_at,
                          max_entries=max_entries, state="running")
            session.add(row)
            await session.flush()
            contest = _contest(row)
            stored = [await insert_timer(session, timer, created_at=starts_at) for timer in timers(contest)]
            return contest, stored
    except IntegrityError as exc:
        raise ContestConflict(channel_id) from exc


async def get_contest(db: Database, contest_id: int) -> ContestRecord | None:
    async with db.session() as session:
        row = await session.get(Contest, contest_id)
        return _contest(row) if row else None


async def running_contest(db: Database, channel_id: int) -> ContestRecord | None:
    """The channel's running contest, if any (there is at most one)."""
    async with db.session() as session:
        stmt = select(Contest).where(Contest.channel_id == channel_id, Contest.state == "running")
        row = (await session.scalars(stmt)).first()
        return _contest(row) if row else None


async def running_contests(db: Database, guild_id: int | None = None) -> list[ContestRecord]:
    async with db.session() as session:
        stmt = select(Contest).where(Contest.state == "running").order_by(Contest.id)
        if guild_id is not None:
            stmt = stmt.where(Contest.guild_id == guild_id)
        return [_contest(r) for r in await session.scalars(stmt)]


async def latest_contest(db: Database, channel_id: int) -> ContestRecord | None:
    """The channel's most recent contest whatever its state (for /contest status after the end)."""
    async with db.session() as session:
        stmt = select(Contest).where(Contest.channel_id == channel_id).order_by(Contest.id.desc()).limit(1)
        row = (await session.scalars(stmt)).first()
        return _contest(row) if row else None


async def set_announcement_message(db: Database, contest_id: int, message_id: int | None) -> None:
    async with db.session(write=True) as session:
        await session.execute(update(Contest).where(Contest.id == contest_id)
                              .values(announcement_message_id=message_id))


async def mark_voting_announced(db: Database, contest_id: int, at: datetime) -> bool:
    """Record that the "voting is open" step ran; False when another run (or a cancel) got there first."""
    async with db.session(write=True) as session:
        result = await session.execute(
            update(Contest).where(Contest.id == contest_id, Contest.state == "running",
                                  Contest.voting_announced_at.is_(None)).values(voting_announced_at=at))
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def cancel_contest(db: Database, contest_id: int, at: datetime) -> ContestRecord | None:
    """Cancel a running contest (None when it was not running); its entries stay for the record."""
    async with db.session(write=True) as session:
        row = await session.get(Contest, contest_id, with_for_update=True)
        if row is None or row.state != "running":
            return None
        row.state, row.finished_at, row.results_posted_at = "cancelled", at, at
        await session.flush()
        return _contest(row)


Ranker = Callable[[list[TalliedEntry]], Sequence[tuple[int, int, int]]]
"""Maps tallied entries to ``(entry_id, place, points)`` rows; the contest rules decide, not the database."""


async def finish_contest(db: Database, contest_id: int, at: datetime,
                         ranker: Ranker) -> tuple[ContestRecord, list[ResultRecord]] | None:
    """Freeze the ranking and mark the contest finished, in one transaction; None when it was not running.

    Counting and storing together means a vote or entry deletion cannot slip between the count and the
    stored result.
    """
    async with db.session(write=True) as session:
        row = await session.get(Contest, contest_id, with_for_update=True)
        if row is None or row.state != "running":
            return None
        tallied = await _tallies(session, contest_id)
        by_id = {t.entry.id: t for t in tallied}
        results = []
        for entry_id, place, points in ranker(tallied):
            t = by_id[entry_id]
            result = ContestResult(contest_id=contest_id, entry_id=entry_id, guild_id=row.guild_id,
                                   user_id=t.entry.user_id, place=place, votes=t.votes, points=points)
            session.add(result)
            results.append(result)
        row.state, row.finished_at = "finished", at
        await session.flush()
        return _contest(row), [_result(r) for r in results]


async def results_for(db: Database, contest_id: int) -> list[ResultRecord]:
    async with db.session() as session:
        stmt = select(ContestResult).where(ContestResult.contest_id == contest_id).order_by(ContestResult.place)
        return [_result(r) for r in await session.scalars(stmt)]


async def mark_results_posted(db: Database, contest_id: int, message_id: int | None, at: datetime) -> None:
    async with db.session(write=True) as session:
        await session.execute(update(Contest).where(Contest.id == contest_id)
                              .values(results_message_id=message_id, results_posted_at=at))


async def leaderboard_rows(db: Database, guild_id: int) -> list[tuple[int, int, int]]:
    """``(contest_id, user_id, place)`` for every frozen result in the guild (finished contests only)."""
    async with db.session() as session:
        stmt = (select(ContestResult.contest_id, ContestResult.user_id, ContestResult.place)
                .join(Contest, Contest.id == ContestResult.contest_id)
                .where(ContestResult.guild_id == guild_id, Contest.state == "finished"))
        return [(r[0], r[1], r[2]) for r in await session.execute(stmt)]


# --- entries -----------------------------------------------------------------------------------------------


async def add_entry(db: Database, *, contest_id: int, member_id: int, job_id: int, image_index: int,
                    now: datetime,
                    validate: Callable[[ContestRecord, EntryCandidate | None], None]) -> EntryRecord:
    """Insert an entry if ``validate`` (called inside the write transaction) does not raise.

    ``validate`` receives None as the candidate when the job or its image does not exist.
    """
    async with db.session(write=True) as session:
        contest = await session.get(Contest, contest_id, with_for_update=True)
        if contest is None:
            raise NotFound(f"contest {contest_id}")
        record = _contest(contest)
        job = await session.get(Job, job_id)
        image = None
        if job is not None:
            image = (await session.scalars(
                select(Image).where(Image.job_id == job_id, Image.index == image_index))).first()
        if job is None or image is None:
            validate(record, None)
            raise NotFound(f"job {job_id} image {image_index}")
        entries_by_member = int(await session.scalar(
            select(func.count(ContestEntry.id)).where(ContestEntry.contest_id == contest_id,
                                                       ContestEntry.user_id == member_id)) or 0)
        already = await session.scalar(
            select(ContestEntry.id).where(ContestEntry.contest_id == contest_id, ContestEntry.job_id == job_id,
                                          ContestEntry.image_index == image_index)) is not None
        candidate = EntryCandidate(
            job_id=job.id, image_index=image_index, job_user_id=job.user_id, job_guild_id=job.guild_id,
            job_status=job.status, job_queued_at=job.queued_at, prompt=job.prompt,
            image_exists=not image.pruned, image_nsfw=image.nsfw, entries_by_member=entries_by_member,
            already_entered=already)
        validate(record, candidate)
        row = ContestEntry(contest_id=contest_id, user_id=member_id, job_id=job_id, image_index=image_index,
                           prompt=job.prompt, submitted_at=now)
        session.add(row)
        await session.flush()
        return _entry(row)


async def set_entry_message(db: Database, entry_id: int, message_id: int | None) -> None:
    async with db.session(write=True) as session:
        await session.execute(update(ContestEntry).where(ContestEntry.id == entry_id).values(message_id=message_id))


async def entry_by_message(db: Database, message_id: int) -> EntryRecord | None:
    async with db.session() as session:
        row = (await session.scalars(select(ContestEntry).where(ContestEntry.message_id == message_id))).first()
        return _entry(row) if row else None


async def delete_entry(db: Database, entry_id: int) -> EntryRecord | None:
    """Withdraw an entry and its votes (cascade); the frozen results of a finished contest are kept."""
    async with db.session(write=True) as session:
        row = await session.get(ContestEntry, entry_id)
        if row is None:
            return None
        record = _entry(row)
        await session.execute(delete(ContestVote).where(ContestVote.entry_id == entry_id))
        await session.delete(row)
        return record


async def _tallies(session: AsyncSession, contest_id: int) -> list[TalliedEntry]:
    # Only this contest's votes are counted (its entries, then their votes by index), not every contest's.
    votes = (select(ContestVote.entry_id, func.count(ContestVote.id).label("n"))
             .join(ContestEntry, ContestEntry.id == ContestVote.entry_id)
             .where(ContestEntry.contest_id == contest_id)
             .group_by(ContestVote.entry_id).subquery())
    stmt = (select(ContestEntry, func.coalesce(votes.c.n, 0), Image.path, Image.pruned)
            .outerjoin(votes, votes.c.entry_id == ContestEntry.id)
            .outerjoin(Image, (Image.job_id == ContestEntry.job_id) & (Image.index == ContestEntry.image_index))
            .where(ContestEntry.contest_id == contest_id)
            .order_by(ContestEntry.submitted_at, ContestEntry.id))
    return [TalliedEntry(entry=_entry(entry), votes=int(n), image_path=None if (path is None or pruned) else path)
            for entry, n, path, pruned in await session.execute(stmt)]


async def tallies(db: Database, contest_id: int) -> list[TalliedEntry]:
    """Every entry with its vote count from the votes table, in submission order."""
    async with db.session() as session:
        return await _tallies(session, contest_id)


async def contest_counts(db: Database, contest_id: int) -> tuple[int, int, int]:
    """``(entries, votes, distinct entrants)`` for /contest status."""
    async with db.session() as session:
        entries, entrants = (await session.execute(
            select(func.count(ContestEntry.id), func.count(func.distinct(ContestEntry.user_id)))
            .where(ContestEntry.contest_id == contest_id))).one()
        votes = await session.scalar(
            select(func.count(ContestVote.id)).join(ContestEntry, ContestEntry.id == ContestVote.entry_id)
            .where(ContestEntry.contest_id == contest_id))
        return int(entries or 0), int(votes or 0), int(entrants or 0)


# --- votes -------------------------------------------------------------------------------------------------


async def _vote_count(session: AsyncSession, entry_id: int) -> int:
    return int(await session.scalar(select(func.count(ContestVote.id)).where(ContestVote.entry_id == entry_id))
               or 0)


async def _vote_target(session: AsyncSession, entry_id: int, voter_id: int) -> tuple[ContestRecord, EntryRecord,
                                                                                        int | None]:
    """The entry's contest, the entry, and the member's vote on it (if any): what every vote rule needs."""
    entry = await session.get(ContestEntry, entry_id)
    if entry is None:
        raise NotFound(f"entry {entry_id}")
    contest = _contest(await session.get_one(Contest, entry.contest_id, with_for_update={"read": True}))
    vote_id = await session.scalar(select(ContestVote.id).where(
        ContestVote.entry_id == entry_id, ContestVote.voter_id == voter_id))
    return contest, _entry(entry), vote_id


async def add_vote(db: Database, *, entry_id: int, voter_id: int, now: datetime,
                   validate: Callable[[ContestRecord, EntryRecord, bool], None]) -> VoteChange:
    """Add a vote if ``validate(contest, entry, already_voted)`` does not raise; returns the new count."""
    async with db.session(write=True) as session:
        contest, record, vote_id = await _vote_target(session, entry_id, voter_id)
        validate(contest, record, vote_id is not None)
        try:
            async with session.begin_nested():
                session.add(ContestVote(entry_id=entry_id, voter_id=voter_id, created_at=now))
        except IntegrityError:
            validate(contest, record, True)  # a concurrent click won the race: refuse as a double vote
            raise
        return VoteChange(entry=record, contest=contest, votes=await _vote_count(session, entry_id))


async def remove_vote(db: Database, *, entry_id: int, voter_id: int, now: datetime,
                      validate: Callable[[ContestRecord, EntryRecord, bool], None]) -> VoteChange:
    """Remove a vote if ``validate(contest, entry, has_voted)`` does not raise; returns the new count."""
    async with db.session(write=True) as session:
        contest, record, vote_id = await _vote_target(session, entry_id, voter_id)
        validate(contest, record, vote_id is not None)
        await session.execute(delete(ContestVote).where(ContestVote.id == vote_id))
        return VoteChange(entry=record, contest=contest, votes=await _vote_count(session, entry_id))


async def has_voted(db: Database, entry_id: int, voter_id: int) -> bool:
    async with db.session() as session:
        return await session.scalar(select(ContestVote.id).where(
            ContestVote.entry_id == entry_id, ContestVote.voter_id == voter_id)) is not None
