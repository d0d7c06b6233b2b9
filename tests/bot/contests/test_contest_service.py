"""The contest lifecycle over a real SQLite database with a hand-driven clock."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from PIL import Image

from bot.clock import ManualClock
from bot.contests.rules import RuleError
from bot.contests.service import ContestService, Outcome
from bot.storage import contest_repository as repo
from bot.storage import repository
from bot.storage.contest_records import ContestRecord
from bot.storage.db import Database

GUILD, CHANNEL = 1000, 2000  # as in conftest.py
ALICE, BOB, CAROL, DAVE = 11, 12, 13, 14
MakeJob = Callable[..., Awaitable[int]]


class Recorder:
    """A publisher that remembers what it was asked to post."""

    def __init__(self) -> None:
        self.voting: list[int] = []
        self.results: list[Outcome] = []
        self.fail_results = 0

    async def voting_opened(self, contest: ContestRecord, entries: int) -> None:
        self.voting.append(contest.id)

    async def results_ready(self, contest: ContestRecord, outcome: Outcome) -> int | None:
        if self.fail_results:
            self.fail_results -= 1
            raise RuntimeError("discord is down")
        self.results.append(outcome)
        return 999




async def _start(service: ContestService, **kwargs: object) -> ContestRecord:
    options = {"guild_id": GUILD, "channel_id": CHANNEL, "created_by": 1, "theme": "cats in space",
               "submit_for": "1h", "vote_for": "1h", **kwargs}
    return await service.start(**options)  # type: ignore[arg-type]


async def test_one_running_contest_per_channel(service: ContestService) -> None:
    await _start(service)
    with pytest.raises(RuleError) as info:
        await _start(service)
    assert info.value.code == "busy"
    await _start(service, channel_id=CHANNEL + 1)  # another channel is fine


@pytest.mark.parametrize(("options", "code"), [
    ({"submit_for": "soon"}, "bad_duration"), ({"vote_for": "0m"}, "bad_duration"),
    ({"theme": "   "}, "bad_theme"), ({"max_entries": 0}, "bad_max_entries"),
])
async def test_start_refuses_bad_input(service: ContestService, options: dict, code: str) -> None:
    with pytest.raises(RuleError) as info:
        await _start(service, **options)
    assert info.value.code == code


async def test_full_contest_ranks_from_the_votes_table(service: ContestService, clock: ManualClock,
                                                       make_job: MakeJob) -> None:
    publisher = Recorder()
    service.publisher = publisher
    service.start_scheduler()
    contest = await _start(service, max_entries=1)
    jobs = {user: await make_job(user, colour=(user * 10, 0, 0)) for user in (ALICE, BOB, CAROL)}
    entries = {}
    for user in (ALICE, BOB, CAROL):
        _, entries[user] = await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=user,
                                                job_id=jobs[user])
        await clock.advance(timedelta(seconds=1))
    second = await make_job(ALICE)
    with pytest.raises(RuleError, match="limit is 1"):
        await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=second)
    with pytest.raises(RuleError) as early:
        await service.vote(entries[ALICE].id, BOB)
    assert early.value.code == "not_voting"

    await clock.set(contest.submit_ends_at)
    await service.scheduler.wait_settled()
    assert publisher.voting == [contest.id]
    # Carol: 2 votes, Bob: 2 votes (submitted before Carol, so Bob wins the tie), Alice: 1
    await service.vote(entries[CAROL].id, ALICE)
    await service.vote(entries[CAROL].id, DAVE)
    await service.vote(entries[BOB].id, ALICE)
    change = await service.vote(entries[BOB].id, DAVE)
    assert change.votes == 2
    await service.vote(entries[ALICE].id, BOB)
    for voter, entry, code in [(CAROL, CAROL, "self_vote"), (ALICE, CAROL, "double_vote")]:
        with pytest.raises(RuleError) as info:
            await service.vote(entries[entry].id, voter)
        assert info.value.code == code
    # unvote and vote again: still one vote
    assert (await service.unvote(entries[ALICE].id, BOB)).votes == 0
    assert (await service.vote(entries[ALICE].id, BOB)).votes == 1

    await clock.set(contest.vote_ends_at)
    await service.scheduler.wait_settled()
    assert len(publisher.results) == 1
    outcome = publisher.results[0]
    assert [(r.entry.user_id, r.votes, r.points) for r in outcome.ranking] == [(BOB, 2, 3), (CAROL, 2, 2),
                                                                               (ALICE, 1, 1)]
    stored = await repo.get_contest(service.db, contest.id)
    assert stored is not None and stored.state == "finished" and stored.results_message_id == 999
    with pytest.raises(RuleError):
        await service.vote(entries[ALICE].id, DAVE)

    picture = await service.picture(outcome, {BOB: "bob", CAROL: "carol", ALICE: "alice"})
    assert picture is not None
    with Image.open(io.BytesIO(picture)) as image:
        assert image.width > 3 * 300
        assert image.getpixel((16 + 192, 16 + 192)) == (BOB * 10, 0, 0)  # first tile is the winner's image

    board = await service.leaderboard(GUILD)
    assert [(s.user_id, s.wins, s.points) for s in board] == [(BOB, 1, 3), (CAROL, 0, 2), (ALICE, 0, 1)]


async def test_entry_rules_against_real_jobs(service: ContestService, make_job: MakeJob, db: Database) -> None:
    contest = await _start(service)
    refused = await make_job(ALICE, status="refused")
    nsfw = await make_job(ALICE, nsfw=True)
    good = await make_job(ALICE)
    cases = [
        (BOB, good, "not_yours"), (ALICE, refused, "not_done"), (ALICE, nsfw, "nsfw"), (ALICE, 999_999, "no_job"),
    ]
    for member, job, code in cases:
        with pytest.raises(RuleError) as info:
            await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=member, job_id=job)
        assert info.value.code == code, (member, job)
    with pytest.raises(RuleError) as info:
        await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=good, image_index=3)
    assert info.value.code == "no_image"
    await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=good)
    with pytest.raises(RuleError) as info:
        await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=good)
    assert info.value.code == "duplicate"
    assert (await repo.contest_counts(db, contest.id))[0] == 1


async def test_filter_is_checked_again(db: Database, clock: ManualClock, make_job: MakeJob) -> None:
    from bot.gate.content_filter import ContentFilter

    await repository.add_blocked_terms(db, GUILD, ["dragon"])  # the server's own term counts too
    service = ContestService(db, clock=clock, content_filter=ContentFilter(["forbidden"]))
    await _start(service)
    for prompt in ("a forbidden cat", "a dragon"):
        job = await make_job(ALICE, prompt=prompt)
        with pytest.raises(RuleError) as info:
            await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=job)
        assert info.value.code == "filtered"


async def test_old_image_cannot_enter(service: ContestService, clock: ManualClock, make_job: MakeJob) -> None:
    job = await make_job(ALICE)
    await clock.advance(timedelta(minutes=1))  # the contest starts after the image was made
    await _start(service)
    with pytest.raises(RuleError) as info:
        await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=job)
    assert info.value.code == "too_old"


async def test_deleted_entry_message_withdraws_the_entry(service: ContestService, clock: ManualClock,
                                                         make_job: MakeJob, db: Database) -> None:
    contest = await _start(service)
    _, entry = await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE,
                                    job_id=await make_job(ALICE))
    await service.entry_posted(entry.id, 555)
    await clock.set(contest.submit_ends_at)
    await service.vote(entry.id, BOB)
    withdrawn = await service.withdraw_by_message(555)
    assert withdrawn is not None and withdrawn.id == entry.id
    assert await repo.tallies(db, contest.id) == []
    with pytest.raises(RuleError) as info:
        await service.vote(entry.id, CAROL)
    assert info.value.code == "no_entry"
    assert await service.withdraw_by_message(555) is None


async def test_cancel_stops_the_contest(service: ContestService, clock: ManualClock) -> None:
    publisher = Recorder()
    service.publisher = publisher
    service.start_scheduler()
    contest = await _start(service)
    cancelled = await service.cancel(GUILD, CHANNEL)
    assert cancelled.state == "cancelled"
    with pytest.raises(RuleError):
        await service.cancel(GUILD, CHANNEL)
    await clock.set(contest.vote_ends_at)
    await service.scheduler.wait_settled()
    assert publisher.voting == [] and publisher.results == []
    status = await service.status(GUILD, CHANNEL, ALICE)
    assert status.phase == "cancelled"
    await _start(service)  # the channel is free again


async def test_deadline_passed_while_down_is_processed_at_start(db: Database, clock: ManualClock,
                                                                make_job: MakeJob) -> None:
    first = ContestService(db, clock=clock)
    contest = await _start(first)
    _, entry = await first.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE,
                                  job_id=await make_job(ALICE))
    await first.close()  # "the bot goes down" before any deadline
    await clock.set(contest.vote_ends_at + timedelta(hours=5))
    second = ContestService(db, clock=clock)
    publisher = Recorder()
    second.publisher = publisher
    second.start_scheduler()
    await second.scheduler.wait_settled()
    assert [r.entry.id for r in publisher.results[0].ranking] == [entry.id]
    stored = await repo.get_contest(db, contest.id)
    assert stored is not None and stored.state == "finished" and stored.results_posted_at is not None
    await second.close()


async def test_results_not_posted_are_retried(db: Database, clock: ManualClock, make_job: MakeJob,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.timers import deadlines as scheduler

    monkeypatch.setattr(scheduler, "RETRY_SECONDS", 0.01)
    service = ContestService(db, clock=clock)
    publisher = Recorder()
    publisher.fail_results = 1
    service.publisher = publisher
    service.start_scheduler()
    contest = await _start(service)
    await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=await make_job(ALICE))
    await clock.set(contest.vote_ends_at)
    for _ in range(50):
        if publisher.results:
            break
        await asyncio.sleep(0.02)
    assert len(publisher.results) == 1 and publisher.results[0].ranking[0].votes == 0
    await service.close()


async def test_contest_with_no_entries_finishes_without_picture(service: ContestService, clock: ManualClock) -> None:
    publisher = Recorder()
    service.publisher = publisher
    service.start_scheduler()
    contest = await _start(service)
    await clock.set(contest.vote_ends_at)
    await service.scheduler.wait_settled()
    assert publisher.results and publisher.results[0].ranking == []
    assert await service.picture(publisher.results[0], {}) is None


async def test_concurrent_double_votes_count_once(service: ContestService, clock: ManualClock,
                                                  make_job: MakeJob, db: Database) -> None:
    contest = await _start(service)
    _, entry = await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE,
                                    job_id=await make_job(ALICE))
    await clock.set(contest.submit_ends_at)
    results = await asyncio.gather(*(service.vote(entry.id, BOB) for _ in range(5)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, RuleError) for r in results if isinstance(r, BaseException))
    assert (await repo.tallies(db, contest.id))[0].votes == 1


async def test_unique_constraint_backs_up_the_double_vote_rule(service: ContestService, clock: ManualClock,
                                                              make_job: MakeJob, db: Database) -> None:
    """Even when a check in code misses a double vote (a race on PostgreSQL), the database refuses it."""
    contest = await _start(service)
    _, entry = await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE,
                                    job_id=await make_job(ALICE))
    calls: list[bool] = []

    def lenient(contest_record: ContestRecord, entry_record: object, already: bool) -> None:
        calls.append(already)
        if len(calls) > 2:
            raise RuleError("double", code="double_vote")

    now = contest.submit_ends_at
    await repo.add_vote(db, entry_id=entry.id, voter_id=BOB, now=now, validate=lenient)
    with pytest.raises(RuleError):
        await repo.add_vote(db, entry_id=entry.id, voter_id=BOB, now=now, validate=lenient)
    assert calls == [False, True, True]
    assert (await repo.tallies(db, contest.id))[0].votes == 1


async def test_submittable_only_during_submissions_for_new_jobs(service: ContestService, clock: ManualClock,
                                                                make_job: MakeJob) -> None:
    from bot.storage import repository

    assert await service.submittable(CHANNEL, clock.now()) is None
    contest = await _start(service)
    job = await repository.get_job(service.db, await make_job(ALICE))
    assert job is not None
    assert (await service.submittable(CHANNEL, job.queued_at)) == contest
    assert await service.submittable(CHANNEL + 1, job.queued_at) is None
    assert await service.submittable(CHANNEL, contest.starts_at - timedelta(seconds=1)) is None
    await clock.set(contest.submit_ends_at)
    assert await service.submittable(CHANNEL, job.queued_at) is None


async def test_image_from_another_server_cannot_enter(service: ContestService, make_job: MakeJob) -> None:
    await _start(service)
    job = await make_job(ALICE, guild=GUILD + 1)
    with pytest.raises(RuleError) as info:
        await service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=job)
    assert info.value.code == "no_job"


async def test_concurrent_entries_respect_max_entries(service: ContestService, make_job: MakeJob,
                                                      db: Database) -> None:
    contest = await _start(service, max_entries=1)
    job = await make_job(ALICE, count=3)
    results = await asyncio.gather(
        *(service.submit(guild_id=GUILD, channel_id=CHANNEL, member_id=ALICE, job_id=job, image_index=i)
          for i in range(3)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, RuleError) and r.code == "max_entries" for r in results if isinstance(r, BaseException))
    assert (await repo.contest_counts(db, contest.id))[0] == 1
