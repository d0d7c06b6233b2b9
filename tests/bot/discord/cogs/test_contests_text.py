"""The contest cog's messages: deadlines as Discord timestamps, ranking in order, mentions that never ping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.contests.service import Outcome, RankedEntry
from bot.discord.cogs.contests import (
    SubmitButton,
    UnvoteButton,
    VoteButton,
    announcement_text,
    entry_view,
    ranking_messages,
    submit_items,
)
from bot.storage.contest_records import ContestRecord, EntryRecord

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
CONTEST = ContestRecord(
    id=7, guild_id=1, channel_id=2, theme="lighthouses", created_by=3, starts_at=T0,
    submit_ends_at=T0 + timedelta(hours=1), vote_ends_at=T0 + timedelta(days=1), max_entries=2, state="finished",
    announcement_message_id=None, voting_announced_at=None, finished_at=None, results_message_id=None,
    results_posted_at=None)


def _ranked(place: int, user: int, votes: int) -> RankedEntry:
    entry = EntryRecord(id=place * 10, contest_id=7, user_id=user, job_id=1, image_index=0, prompt="p",
                        message_id=None, submitted_at=T0)
    return RankedEntry(place=place, entry=entry, votes=votes, points=max(0, 4 - place), image_path=None)


def test_announcement_has_both_deadlines_in_both_styles() -> None:
    text = announcement_text(CONTEST)
    for when in (CONTEST.submit_ends_at, CONTEST.vote_ends_at):
        unix = int(when.timestamp())
        assert f"<t:{unix}:R>" in text and f"<t:{unix}:f>" in text
    assert "lighthouses" in text and "up to **2**" in text


def test_ranking_lists_everyone_in_order() -> None:
    outcome = Outcome(CONTEST, [_ranked(1, 101, 5), _ranked(2, 102, 5), _ranked(3, 103, 1), _ranked(4, 104, 0)])
    [text] = ranking_messages(outcome)
    positions = [text.index(f"<@{u}>") for u in (101, 102, 103, 104)]
    assert positions == sorted(positions)
    assert "🥇 <@101>: 5 votes" in text and "4. <@104>: 0 votes" in text and "🥉 <@103>: 1 vote " in text
    assert "No entries" in ranking_messages(Outcome(CONTEST, []))[0]


def test_long_ranking_is_split_not_cut() -> None:
    outcome = Outcome(CONTEST, [_ranked(p, 1000 + p, 100 - p) for p in range(1, 121)])
    chunks = ranking_messages(outcome)
    assert len(chunks) > 1 and all(len(c) <= 2000 for c in chunks)
    joined = "\n".join(chunks)
    assert all(f"<@{1000 + p}>" in joined for p in range(1, 121))


def test_buttons_round_trip_their_ids() -> None:
    assert [i.item.custom_id for i in submit_items(42, 2)] == ["contest:submit:42:0", "contest:submit:42:1"]
    assert submit_items(42, 1)[0].item.label == "Submit to contest"
    assert [c.custom_id for c in entry_view(9).children] == ["contest:vote:9", "contest:unvote:9"]
    assert SubmitButton.__discord_ui_compiled_template__.fullmatch("contest:submit:42:1")
    assert VoteButton.__discord_ui_compiled_template__.fullmatch("contest:vote:9")
    assert UnvoteButton.__discord_ui_compiled_template__.fullmatch("contest:unvote:9")
    assert not VoteButton.__discord_ui_compiled_template__.fullmatch("imagine:rerun:9")
