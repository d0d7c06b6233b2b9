"""Pure contest rules: durations, phases, who may enter or vote, and the final ranking.

Nothing here touches Discord or the database, so every rule is table-tested in microseconds and the service
and the cog only ever *ask* these functions; a rule changed here is changed everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Phase = Literal["submitting", "voting", "finished", "cancelled"]
ContestState = Literal["running", "finished", "cancelled"]

#: Points for first, second and third place; wins count first places only.
PODIUM_POINTS: tuple[int, ...] = (3, 2, 1)

MIN_DURATION = timedelta(minutes=1)
MAX_DURATION = timedelta(days=30)
MAX_ENTRIES_LIMIT = 50

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)\s*([smhdw])")
_WHOLE = re.compile(r"^\s*(?:\d+\s*[smhdw]\s*)+$")


class RuleError(ValueError):
    """A rule said no; ``message`` is written for the member who asked."""

    def __init__(self, message: str, *, code: str = "refused") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DurationError(RuleError):
    """A duration the bot cannot read or will not accept."""


def parse_duration(text: str) -> timedelta:
    """Read ``30m``, ``2h``, ``1d``, ``1h30m`` (units s/m/h/d/w) into a timedelta within sane bounds."""
    cleaned = (text or "").strip().lower()
    if not cleaned or not _WHOLE.match(cleaned):
        raise DurationError(
            f"`{text}` is not a duration I understand. Use a number and a unit, e.g. `30m`, `2h`, `1d` or `1h30m` "
            "(units: s, m, h, d, w).", code="bad_duration")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    value = timedelta(seconds=seconds)
    if value < MIN_DURATION:
        raise DurationError(f"`{text}` is too short: a window must last at least 1 minute.", code="bad_duration")
    if value > MAX_DURATION:
        raise DurationError(f"`{text}` is too long: a window may last at most 30 days.", code="bad_duration")
    return value


def format_duration(value: timedelta) -> str:
    """The inverse of :func:`parse_duration` for messages (``1d2h``, ``45m``)."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Windows:
    """A contest's time line: entries in ``[starts_at, submit_ends_at)``, votes until ``vote_ends_at``."""

    starts_at: datetime
    submit_ends_at: datetime
    vote_ends_at: datetime

    @classmethod
    def from_durations(cls, starts_at: datetime, submit_for: timedelta, vote_for: timedelta) -> Windows:
        return cls(starts_at, starts_at + submit_for, starts_at + submit_for + vote_for)


def phase_at(windows: Windows, now: datetime, state: ContestState = "running") -> Phase:
    """Which window ``now`` falls in; a contest past its last deadline is finished even before results post."""
    if state == "cancelled":
        return "cancelled"
    if state == "finished" or now >= windows.vote_ends_at:
        return "finished"
    if now < windows.submit_ends_at:
        return "submitting"
    return "voting"


def check_max_entries(value: int | None) -> int | None:
    """Validate the optional ``max_entries`` option of ``/contest start``."""
    if value is None:
        return None
    if value < 1 or value > MAX_ENTRIES_LIMIT:
        raise RuleError(f"max_entries must be between 1 and {MAX_ENTRIES_LIMIT}.", code="bad_max_entries")
    return value


def check_entry(
    *,
    windows: Windows,
    state: ContestState,
    now: datetime,
    member_id: int,
    job_user_id: int,
    job_status: str,
    job_queued_at: datetime,
    filter_allowed: bool,
    entries_by_member: int,
    max_entries: int | None,
    already_entered: bool,
    image_available: bool = True,
    image_nsfw: bool = False,
) -> None:
    """Raise :class:`RuleError` unless this member may enter this job's image now.

    Only an image the member generated *during* the submission window, that finished and passed the filter,
    may enter: that is what keeps the contest a contest (no old favourites, no one else's work, nothing the
    filter would refuse today).
    """
    phase = phase_at(windows, now, state)
    if phase != "submitting":
        raise RuleError("Submissions are closed for this contest." if phase != "cancelled"
                        else "This contest was cancelled.", code="closed")
    if job_user_id != member_id:
        raise RuleError("You can only submit your own images.", code="not_yours")
    if job_status != "done":
        raise RuleError("That image is not finished (or was refused), so it cannot enter.", code="not_done")
    if not filter_allowed:
        raise RuleError("That image's prompt is not allowed by this server's content filter.", code="filtered")
    if image_nsfw:
        raise RuleError("That image was flagged as NSFW, so it cannot be posted as an entry.", code="nsfw")
    if not image_available:
        raise RuleError("That image's file is no longer stored, so it cannot enter.", code="unavailable")
    if not (windows.starts_at <= job_queued_at < windows.submit_ends_at):
        raise RuleError("Only images generated after the contest started can enter.", code="too_old")
    if already_entered:
        raise RuleError("That image is already entered in this contest.", code="duplicate")
    if max_entries is not None and entries_by_member >= max_entries:
        raise RuleError(f"You already have {entries_by_member} entr{'y' if entries_by_member == 1 else 'ies'} "
                        f"in this contest; the limit is {max_entries}.", code="max_entries")


def check_vote(
    *,
    windows: Windows,
    state: ContestState,
    now: datetime,
    voter_id: int,
    entry_author_id: int,
    already_voted: bool,
) -> None:
    """Raise :class:`RuleError` unless ``voter_id`` may add a vote to this entry now."""
    phase = phase_at(windows, now, state)
    if phase == "submitting":
        raise RuleError("Voting has not started yet: it opens when submissions close.", code="not_voting")
    if phase != "voting":
        raise RuleError("Voting is closed for this contest.", code="not_voting")
    if voter_id == entry_author_id:
        raise RuleError("You cannot vote for your own entry.", code="self_vote")
    if already_voted:
        raise RuleError("You already voted for this entry.", code="double_vote")


def check_unvote(*, windows: Windows, state: ContestState, now: datetime, has_voted: bool) -> None:
    """Raise :class:`RuleError` unless a vote may be withdrawn now (only while voting is open)."""
    if phase_at(windows, now, state) != "voting":
        raise RuleError("Votes can only be changed while voting is open.", code="not_voting")
    if not has_voted:
        raise RuleError("You have not voted for this entry.", code="no_vote")


@dataclass(frozen=True)
class Tally:
    """One entry with its vote count, as counted from the votes table."""

    entry_id: int
    user_id: int
    votes: int
    submitted_at: datetime


@dataclass(frozen=True)
class Placed:
    place: int
    entry_id: int
    user_id: int
    votes: int
    submitted_at: datetime
    points: int


def rank(tallies: Iterable[Tally]) -> list[Placed]:
    """Most votes first; equal votes go to the earlier submission (then the lower id, for determinism)."""
    ordered = sorted(tallies, key=lambda t: (-t.votes, t.submitted_at, t.entry_id))
    return [Placed(place=i + 1, entry_id=t.entry_id, user_id=t.user_id, votes=t.votes, submitted_at=t.submitted_at,
                   points=points_for(i + 1))
            for i, t in enumerate(ordered)]


def points_for(place: int) -> int:
    """Leaderboard points for a place (1-based); beyond the podium earns nothing."""
    return PODIUM_POINTS[place - 1] if 1 <= place <= len(PODIUM_POINTS) else 0


@dataclass(frozen=True)
class Standing:
    user_id: int
    wins: int
    points: int
    contests: int


def leaderboard(results: Iterable[tuple[int, int, int]]) -> list[Standing]:
    """All-time standings from ``(contest_id, user_id, place)`` rows of finished contests.

    Sorted by points, then wins, then user id; ``contests`` counts distinct contests entered.
    """
    wins: dict[int, int] = {}
    points: dict[int, int] = {}
    seen: dict[int, set[int]] = {}
    for contest_id, user_id, place in results:
        wins[user_id] = wins.get(user_id, 0) + (place == 1)
        points[user_id] = points.get(user_id, 0) + points_for(place)
        seen.setdefault(user_id, set()).add(contest_id)
    standings = [Standing(user_id=u, wins=wins[u], points=points[u], contests=len(seen[u])) for u in seen]
    return sorted(standings, key=lambda s: (-s.points, -s.wins, s.user_id))
