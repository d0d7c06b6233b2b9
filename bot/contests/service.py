"""The contest lifecycle over the database: start, enter, vote, cancel, and the two deadlines.

Discord-free on purpose: the cog turns interactions into calls here and this service's answers into messages,
and a :class:`ContestPublisher` (the cog) is told when a deadline has been processed so it can post. Every time
comes from the injected :class:`~bot.clock.Clock`, so tests run a day-long contest in milliseconds.

Deadline processing is written durable-first: the database records that a step happened *before* anything is
posted, and a result that was computed but not yet posted stays due, so a crash at any point is repaired by
the scheduler at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from bot.clock import Clock, SystemClock
from bot.contests import rules
from bot.contests.picture import PodiumEntry, render_results
from bot.contests.rules import Phase, RuleError, Standing, Tally, Windows
from bot.storage import contest_repository as repo
from bot.storage import repository
from bot.storage.contest_records import (
    ContestRecord,
    EntryCandidate,
    EntryRecord,
    TalliedEntry,
    VoteChange,
)
from bot.storage.db import Database
from bot.timers.deadlines import Deadline, DeadlineScheduler

log = logging.getLogger(__name__)

THEME_MAX_CHARS = 200


class PromptFilter(Protocol):
    """What the service needs from :class:`bot.gate.content_filter.ContentFilter`."""

    def check(self, prompt: str, guild_terms: Iterable[str] = (), *, default_rules: bool | None = None) -> object: ...


class ContestPublisher(Protocol):
    """Posts what the deadlines produce (the cog); raising makes the scheduler retry the step later."""

    async def voting_opened(self, contest: ContestRecord, entries: int) -> None: ...

    async def results_ready(self, contest: ContestRecord, outcome: Outcome) -> int | None:
        """Post the results; returns the message id."""
        ...


@dataclass(frozen=True)
class RankedEntry:
    place: int
    entry: EntryRecord
    votes: int
    points: int
    image_path: str | None


@dataclass(frozen=True)
class Outcome:
    """A finished contest's full ranking (podium first); empty when nobody entered."""

    contest: ContestRecord
    ranking: list[RankedEntry]

    @property
    def podium(self) -> list[RankedEntry]:
        return self.ranking[:3]


@dataclass(frozen=True)
class ContestStatus:
    contest: ContestRecord
    phase: Phase
    entries: int
    votes: int
    entrants: int
    your_entries: int


def windows_of(contest: ContestRecord) -> Windows:
    return Windows(contest.starts_at, contest.submit_ends_at, contest.vote_ends_at)


class ContestService:
    """See the module docstring. One per bot; the cog calls :meth:`start_scheduler` once the bot is ready."""

    def __init__(self, db: Database, *, clock: Clock | None = None, content_filter: PromptFilter | None = None,
                 images_dir: Path | str | None = None) -> None:
        self.db = db
        self.clock: Clock = clock or SystemClock()
        self.content_filter = content_filter
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.publisher: ContestPublisher | None = None
        self.scheduler: DeadlineScheduler[int] = DeadlineScheduler(
            self.clock, self._next_deadline, self.handle_deadline, name="contests")

    # --- scheduler -----------------------------------------------------------------------------------------

    def start_scheduler(self) -> None:
        """Arm the timer from the database (overdue deadlines run at once)."""
        self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.stop()

    async def _next_deadline(self) -> Deadline[int] | None:
        found = await repo.next_contest_deadline(self.db)
        return Deadline(found[0], found[1]) if found else None

    async def handle_deadline(self, contest_id: int) -> None:
        """One step of a contest whose deadline came: open voting, or finish and post the results."""
        contest = await repo.get_contest(self.db, contest_id)
        if contest is None:
            return
        now = self.clock.now()
        if contest.state == "finished" and contest.results_posted_at is None:
            await self._publish_results(contest, await self.outcome(contest))
            return
        if contest.state != "running":
            return
        if now >= contest.vote_ends_at:
            await self.finish(contest_id)
        elif now >= contest.submit_ends_at and await repo.mark_voting_announced(self.db, contest_id, now):
            entries, _, _ = await repo.contest_counts(self.db, contest_id)
            if self.publisher is not None:
                try:
                    await self.publisher.voting_opened(contest, entries)
                except Exception:  # the step is recorded; a lost announcement must not stall the contest
                    log.exception("announcing voting for contest %s failed", contest_id)

    async def finish(self, contest_id: int) -> Outcome | None:
        """Freeze the ranking (counted from the votes table) and post it; None when it was not running."""

        def ranker(tallied: list[TalliedEntry]) -> list[tuple[int, int, int]]:
            ranked = rules.rank(Tally(t.entry.id, t.entry.user_id, t.votes, t.entry.submitted_at) for t in tallied)
            return [(p.entry_id, p.place, p.points) for p in ranked]

        finished = await repo.finish_contest(self.db, contest_id, self.clock.now(), ranker)
        if finished is None:
            return None
        contest, _ = finished
        outcome = await self.outcome(contest)
        await self._publish_results(contest, outcome)
        return outcome

    async def _publish_results(self, contest: ContestRecord, outcome: Outcome) -> None:
        if self.publisher is None:  # nobody to post (tests, or a bot without the cog): still recorded as done
            await repo.mark_results_posted(self.db, contest.id, None, self.clock.now())
            return
        message_id = await self.publisher.results_ready(contest, outcome)  # raising: retried by the scheduler
        await repo.mark_results_posted(self.db, contest.id, message_id, self.clock.now())

    async def outcome(self, contest: ContestRecord) -> Outcome:
        """The frozen ranking of a finished contest, joined with its entries and image files."""
        results = await repo.results_for(self.db, contest.id)
        tallied = {t.entry.id: t for t in await repo.tallies(self.db, contest.id)}
        ranking = []
        for result in results:
            t = tallied.get(result.entry_id) if result.entry_id is not None else None
            if t is None:
                continue  # entry deleted after the end: it keeps its leaderboard points but leaves the picture
            ranking.append(RankedEntry(result.place, t.entry, result.votes, result.points, t.image_path))
        return Outcome(contest, ranking)

    # --- commands ------------------------------------------------------------------------------------------

    async def start(self, *, guild_id: int, channel_id: int, created_by: int, theme: str, submit_for: str,
                    vote_for: str, max_entries: int | None = None) -> ContestRecord:
        """Store a new running contest and arm its deadline; refuses bad input and a busy channel."""
        theme = " ".join((theme or "").split())
        if not theme:
            raise RuleError("Please give the contest a theme.", code="bad_theme")
        if len(theme) > THEME_MAX_CHARS:
            raise RuleError(f"The theme is too long ({len(theme)} characters; at most {THEME_MAX_CHARS}).",
                            code="bad_theme")
        submit = rules.parse_duration(submit_for)
        vote = rules.parse_duration(vote_for)
        rules.check_max_entries(max_entries)
        windows = Windows.from_durations(self.clock.now(), submit, vote)
        try:
            contest = await repo.create_contest(
                self.db, guild_id=guild_id, channel_id=channel_id, theme=theme, created_by=created_by,
                starts_at=windows.starts_at, submit_ends_at=windows.submit_ends_at,
                vote_ends_at=windows.vote_ends_at, max_entries=max_entries)
        except repo.ContestConflict:
            raise RuleError("A contest is already running in that channel. Wait for it to end, or "
                            "`/contest cancel` it first.", code="busy") from None
        self.scheduler.notify(contest.submit_ends_at)
        return contest

    async def set_announcement(self, contest_id: int, message_id: int | None) -> None:
        await repo.set_announcement_message(self.db, contest_id, message_id)

    async def contest_for(self, guild_id: int | None, channel_id: int) -> ContestRecord:
        """The running contest of this channel, else the guild's only running contest; else a clear refusal."""
        contest = await repo.running_contest(self.db, channel_id)
        if contest is not None:
            return contest
        running = await repo.running_contests(self.db, guild_id) if guild_id is not None else []
        if len(running) == 1:
            return running[0]
        if running:
            raise RuleError("Several contests are running in this server: use this in the contest's channel.",
                            code="ambiguous")
        raise RuleError("There is no contest running here.", code="no_contest")

    async def _prompt_allowed(self, guild_id: int | None, prompt: str) -> bool:
        if self.content_filter is None:
            return True
        terms: Iterable[str] = ()
        default_rules: bool | None = None
        if guild_id is not None:
            guild = await repository.get_guild_settings(self.db, guild_id)
            terms, default_rules = guild.blocked_terms, guild.default_filter_rules
        # The filter is CPU work (ICU, RE2): never on the event loop.
        verdict = await asyncio.to_thread(self.content_filter.check, prompt, terms, default_rules=default_rules)
        return bool(getattr(verdict, "allowed", verdict))

    async def submit(self, *, guild_id: int | None, channel_id: int, member_id: int, job_id: int,
                     image_index: int = 0) -> tuple[ContestRecord, EntryRecord]:
        """Enter one of the member's images; every rule of :func:`rules.check_entry` applies."""
        contest = await self.contest_for(guild_id, channel_id)
        now = self.clock.now()

        job = await repository.get_job(self.db, job_id)
        if job is None or job.guild_id != guild_id:  # DM images and other servers' images cannot enter
            raise RuleError(f"I do not know an image job with id {job_id} in this server.", code="no_job")
        # Today's filter and terms, not the ones it passed when it was generated.
        texts = (job.params.prompt, job.params.negative_prompt)
        allowed = all([await self._prompt_allowed(guild_id, text) for text in texts if text])

        def validate(current: ContestRecord, candidate: EntryCandidate | None) -> None:
            if candidate is None:
                raise RuleError(f"Job {job_id} has no image number {image_index + 1}.", code="no_image")
            rules.check_entry(
                windows=windows_of(current), state=current.state, now=now, member_id=member_id,
                job_user_id=candidate.job_user_id, job_status=candidate.job_status,
                job_queued_at=candidate.job_queued_at, filter_allowed=allowed,
                entries_by_member=candidate.entries_by_member, max_entries=current.max_entries,
                already_entered=candidate.already_entered, image_available=candidate.image_exists,
                image_nsfw=candidate.image_nsfw)

        entry = await repo.add_entry(self.db, contest_id=contest.id, member_id=member_id, job_id=job_id,
                                     image_index=image_index, now=now, validate=validate)
        return contest, entry

    async def entry_posted(self, entry_id: int, message_id: int | None) -> None:
        await repo.set_entry_message(self.db, entry_id, message_id)

    async def withdraw(self, entry_id: int) -> EntryRecord | None:
        """Remove an entry outright (its message could not be posted)."""
        return await repo.delete_entry(self.db, entry_id)

    async def entry_image(self, entry: EntryRecord) -> bytes | None:
        """The entry's PNG from the images folder (None when the file is gone)."""
        if entry.job_id is None:
            return None

        for image in await repository.images_for_job(self.db, entry.job_id):
            if image.index == entry.image_index and not image.pruned:
                return await asyncio.to_thread(self._read_image, image.path)
        return None

    async def submittable(self, channel_id: int, queued_at: datetime) -> ContestRecord | None:
        """The channel's contest when a job queued at ``queued_at`` could still enter it (for result buttons)."""
        contest = await repo.running_contest(self.db, channel_id)
        if contest is None:
            return None
        windows = windows_of(contest)
        if rules.phase_at(windows, self.clock.now(), contest.state) != "submitting":
            return None
        return contest if windows.starts_at <= queued_at < windows.submit_ends_at else None

    async def vote(self, entry_id: int, voter_id: int) -> VoteChange:
        """Add a star: one per member per entry, never one's own, only while voting is open."""
        now = self.clock.now()

        def validate(contest: ContestRecord, entry: EntryRecord, already: bool) -> None:
            rules.check_vote(windows=windows_of(contest), state=contest.state, now=now, voter_id=voter_id,
                             entry_author_id=entry.user_id, already_voted=already)

        try:
            return await repo.add_vote(self.db, entry_id=entry_id, voter_id=voter_id, now=now, validate=validate)
        except repo.NotFound:
            raise RuleError("That entry was withdrawn.", code="no_entry") from None

    async def unvote(self, entry_id: int, voter_id: int) -> VoteChange:
        now = self.clock.now()

        def validate(contest: ContestRecord, entry: EntryRecord, has_voted: bool) -> None:
            rules.check_unvote(windows=windows_of(contest), state=contest.state, now=now, has_voted=has_voted)

        try:
            return await repo.remove_vote(self.db, entry_id=entry_id, voter_id=voter_id, now=now,
                                          validate=validate)
        except repo.NotFound:
            raise RuleError("That entry was withdrawn.", code="no_entry") from None

    async def entry_for_message(self, message_id: int) -> EntryRecord | None:
        return await repo.entry_by_message(self.db, message_id)

    async def withdraw_by_message(self, message_id: int) -> EntryRecord | None:
        """An entry's message was deleted: withdraw it (and its votes) while its contest is running."""
        entry = await repo.entry_by_message(self.db, message_id)
        if entry is None:
            return None
        contest = await repo.get_contest(self.db, entry.contest_id)
        if contest is None or contest.state != "running":
            return None  # a finished contest's results are history; keep them
        return await repo.delete_entry(self.db, entry.id)

    async def cancel(self, guild_id: int | None, channel_id: int) -> ContestRecord:
        contest = await self.contest_for(guild_id, channel_id)
        cancelled = await repo.cancel_contest(self.db, contest.id, self.clock.now())
        if cancelled is None:
            raise RuleError("That contest has already ended.", code="ended")
        self.scheduler.notify()
        return cancelled

    async def status(self, guild_id: int | None, channel_id: int, member_id: int) -> ContestStatus:
        """The running contest here, else this channel's latest one."""
        try:
            contest = await self.contest_for(guild_id, channel_id)
        except RuleError:
            latest = await repo.latest_contest(self.db, channel_id)
            if latest is None:
                raise
            contest = latest
        entries, votes, entrants = await repo.contest_counts(self.db, contest.id)
        mine = sum(1 for t in await repo.tallies(self.db, contest.id) if t.entry.user_id == member_id)
        phase = rules.phase_at(windows_of(contest), self.clock.now(), contest.state)
        return ContestStatus(contest, phase, entries, votes, entrants, mine)

    async def leaderboard(self, guild_id: int) -> list[Standing]:
        return rules.leaderboard(await repo.leaderboard_rows(self.db, guild_id))

    # --- results picture -----------------------------------------------------------------------------------

    def _read_image(self, path: str | None) -> bytes | None:
        if path is None:
            return None
        candidate = Path(path)
        if not candidate.is_absolute() and self.images_dir is not None:
            candidate = self.images_dir / candidate
        try:
            return candidate.read_bytes()
        except OSError:
            log.warning("contest image %s is missing; drawing a placeholder", candidate)
            return None

    def picture_sync(self, outcome: Outcome, names: Mapping[int, str]) -> bytes | None:
        """The podium picture (None when nobody entered); blocking, so call it through :meth:`picture`."""
        if not outcome.podium:
            return None
        return render_results([
            PodiumEntry(place=r.place, author=names.get(r.entry.user_id, f"member {r.entry.user_id}"),
                        votes=r.votes, image=self._read_image(r.image_path))
            for r in outcome.podium])

    async def picture(self, outcome: Outcome, names: Mapping[int, str]) -> bytes | None:
        return await asyncio.to_thread(self.picture_sync, outcome, names)

    def remaining(self, when: datetime) -> timedelta:
        return when - self.clock.now()
