"""Table tests for the contest rules: who may enter, who may vote, and how entries are ranked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.contests import rules
from bot.contests.rules import RuleError, Tally, Windows

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
W = Windows.from_durations(T0, timedelta(hours=1), timedelta(hours=1))
SUBMITTING = T0 + timedelta(minutes=30)
VOTING = T0 + timedelta(minutes=90)
AFTER = T0 + timedelta(hours=3)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), (" 90 m ", 5400), ("1w", 604800), ("2H", 7200),
])
def test_parse_duration_accepts(text: str, seconds: int) -> None:
    assert rules.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "abc", "10", "5x", "-5m", "1.5h", "30s", "31d", "m30"])
def test_parse_duration_refuses_with_a_readable_message(text: str) -> None:
    with pytest.raises(rules.DurationError) as info:
        rules.parse_duration(text)
    assert info.value.code == "bad_duration"
    assert "minute" in info.value.message or "duration" in info.value.message or "30 days" in info.value.message


def test_format_duration_round_trips() -> None:
    assert rules.format_duration(rules.parse_duration("1d2h5m")) == "1d2h5m"


@pytest.mark.parametrize(("now", "state", "phase"), [
    (T0, "running", "submitting"),
    (SUBMITTING, "running", "submitting"),
    (W.submit_ends_at, "running", "voting"),
    (VOTING, "running", "voting"),
    (W.vote_ends_at, "running", "finished"),
    (SUBMITTING, "cancelled", "cancelled"),
    (SUBMITTING, "finished", "finished"),
])
def test_phase_at(now: datetime, state: rules.ContestState, phase: str) -> None:
    assert rules.phase_at(W, now, state) == phase


VOTE_CASES = [
    # (name, now, voter, author, already_voted, expected code or None)
    ("ok", VOTING, 2, 1, False, None),
    ("self vote", VOTING, 1, 1, False, "self_vote"),
    ("double vote", VOTING, 2, 1, True, "double_vote"),
    ("before voting", SUBMITTING, 2, 1, False, "not_voting"),
    ("after voting", AFTER, 2, 1, False, "not_voting"),
    ("at vote end", W.vote_ends_at, 2, 1, False, "not_voting"),
    ("at submit end", W.submit_ends_at, 2, 1, False, None),
]


@pytest.mark.parametrize(("name", "now", "voter", "author", "already", "code"), VOTE_CASES,
                         ids=[c[0] for c in VOTE_CASES])
def test_check_vote(name: str, now: datetime, voter: int, author: int, already: bool, code: str | None) -> None:
    if code is None:
        rules.check_vote(windows=W, state="running", now=now, voter_id=voter, entry_author_id=author,
                         already_voted=already)
        return
    with pytest.raises(RuleError) as info:
        rules.check_vote(windows=W, state="running", now=now, voter_id=voter, entry_author_id=author,
                         already_voted=already)
    assert info.value.code == code


def test_vote_on_cancelled_contest_is_refused() -> None:
    with pytest.raises(RuleError):
        rules.check_vote(windows=W, state="cancelled", now=VOTING, voter_id=2, entry_author_id=1, already_voted=False)


@pytest.mark.parametrize(("now", "has_voted", "code"), [
    (VOTING, True, None), (VOTING, False, "no_vote"), (AFTER, True, "not_voting"), (SUBMITTING, True, "not_voting"),
])
def test_check_unvote(now: datetime, has_voted: bool, code: str | None) -> None:
    if code is None:
        rules.check_unvote(windows=W, state="running", now=now, has_voted=has_voted)
        return
    with pytest.raises(RuleError) as info:
        rules.check_unvote(windows=W, state="running", now=now, has_voted=has_voted)
    assert info.value.code == code


ENTRY_OK = dict(windows=W, state="running", now=SUBMITTING, member_id=1, job_user_id=1, job_status="done",
                job_queued_at=T0 + timedelta(minutes=5), filter_allowed=True, entries_by_member=0, max_entries=2,
                already_entered=False)
ENTRY_CASES = [
    ("ok", {}, None),
    ("someone else's image", {"job_user_id": 9}, "not_yours"),
    ("refused job", {"job_status": "refused"}, "not_done"),
    ("failed job", {"job_status": "failed"}, "not_done"),
    ("still running", {"job_status": "running"}, "not_done"),
    ("filter now refuses", {"filter_allowed": False}, "filtered"),
    ("generated before start", {"job_queued_at": T0 - timedelta(seconds=1)}, "too_old"),
    ("during voting", {"now": VOTING}, "closed"),
    ("cancelled", {"state": "cancelled"}, "closed"),
    ("duplicate", {"already_entered": True}, "duplicate"),
    ("nsfw image", {"image_nsfw": True}, "nsfw"),
    ("pruned image", {"image_available": False}, "unavailable"),
    ("at max_entries", {"entries_by_member": 2}, "max_entries"),
    ("below max_entries", {"entries_by_member": 1}, None),
    ("no max_entries", {"entries_by_member": 40, "max_entries": None}, None),
]


@pytest.mark.parametrize(("name", "changes", "code"), ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_check_entry(name: str, changes: dict, code: str | None) -> None:
    kwargs = {**ENTRY_OK, **changes}
    if code is None:
        rules.check_entry(**kwargs)
        return
    with pytest.raises(RuleError) as info:
        rules.check_entry(**kwargs)
    assert info.value.code == code
    assert info.value.message


def test_max_entries_message_names_the_limit() -> None:
    with pytest.raises(RuleError, match="limit is 2"):
        rules.check_entry(**{**ENTRY_OK, "entries_by_member": 2})


@pytest.mark.parametrize(("value", "ok"), [(None, True), (1, True), (50, True), (0, False), (51, False)])
def test_check_max_entries(value: int | None, ok: bool) -> None:
    if ok:
        assert rules.check_max_entries(value) == value
    else:
        with pytest.raises(RuleError):
            rules.check_max_entries(value)


def _t(entry_id: int, user: int, votes: int, minute: int) -> Tally:
    return Tally(entry_id=entry_id, user_id=user, votes=votes, submitted_at=T0 + timedelta(minutes=minute))


RANK_CASES = [
    ("by votes", [_t(1, 10, 1, 0), _t(2, 20, 3, 1), _t(3, 30, 2, 2)], [2, 3, 1]),
    ("tie goes to earlier submission", [_t(1, 10, 2, 5), _t(2, 20, 2, 1), _t(3, 30, 0, 0)], [2, 1, 3]),
    ("all tied", [_t(3, 30, 0, 3), _t(1, 10, 0, 1), _t(2, 20, 0, 2)], [1, 2, 3]),
    ("same second, lower id", [_t(5, 10, 1, 0), _t(4, 20, 1, 0)], [4, 5]),
    ("empty", [], []),
]


@pytest.mark.parametrize(("name", "tallies", "order"), RANK_CASES, ids=[c[0] for c in RANK_CASES])
def test_rank(name: str, tallies: list[Tally], order: list[int]) -> None:
    ranked = rules.rank(tallies)
    assert [p.entry_id for p in ranked] == order
    assert [p.place for p in ranked] == list(range(1, len(order) + 1))
    assert [p.points for p in ranked] == [3, 2, 1, 0, 0][: len(order)]


def test_leaderboard_counts_wins_points_and_contests() -> None:
    rows = [(1, 10, 1), (1, 20, 2), (1, 30, 3), (1, 10, 4), (2, 20, 1), (2, 10, 2), (3, 20, 1)]
    board = rules.leaderboard(rows)
    assert [(s.user_id, s.wins, s.points, s.contests) for s in board] == [
        (20, 2, 8, 3), (10, 1, 5, 2), (30, 0, 1, 1)]
