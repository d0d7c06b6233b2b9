"""Per-member limits: images per sliding window and jobs waiting at once, counted in the database.

Counting ledger rows (not memory) means a restart does not hand everyone a fresh allowance. Exactness under
concurrency, across processes too: for one member, check and insert happen in one write transaction that holds
a database lock for that member (:meth:`Database.hold_lock`: an advisory lock on PostgreSQL, the write lock on
SQLite), so 20 simultaneous requests from any number of bot processes accept exactly what the limits allow.
A granted reservation is pending until the journal links it to its job; while
pending (for at most ``PENDING_SECONDS``) it also counts as a queued job, so concurrent requests see it.

The host's config is the ceiling: a server's own settings (``/settings limits``, stored in ``guild_settings``)
can only tighten it, and that is enforced here, where limits are read, so a row written before the rule (or by
hand) cannot loosen anything. No server may hold more than ``max_queue_share_per_guild`` of the shared queue:
that check runs under a per-server lock, in the same write transaction, so it is exact under bursts too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from bot.clock import utcnow
from bot.config import RateLimitSettings
from bot.storage.db import Database
from bot.storage.ledger import drop_grant, ledger_transaction
from bot.storage.records import GuildSettingsRecord

PENDING_SECONDS = 120


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one member right now."""

    images_per_window: int
    window_seconds: int
    max_queued_per_user: int

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.window_seconds)


@dataclass(frozen=True)
class Reservation:
    """Images granted to a member; pass it to :meth:`RateLimiter.release` if the job is refused later."""

    entry_id: int
    guild_id: int | None
    user_id: int
    images: int
    at: datetime
    limits: Limits


@dataclass(frozen=True)
class Usage:
    used: int
    limits: Limits
    queued: int
    resets_at: datetime | None  # when the oldest counted entry leaves the window


class RateLimited(Exception):
    """A refusal a member can read: ``reason`` says why, ``retry_at`` when to try again.

    ``kind`` is ``window`` (too many images lately), ``queued`` (too many jobs waiting; retry when one
    finishes, ``retry_at`` is then only a hint), ``server_share`` (the member's server holds its whole share of
    the queue; also retry when a job finishes) or ``too_large`` (more images than the window allows at all).
    """

    def __init__(self, retry_at: datetime, reason: str,
                 kind: Literal["window", "queued", "server_share", "too_large"] = "window"):
        super().__init__(reason)
        self.retry_at = retry_at
        self.reason = reason
        self.kind = kind


def _describe_window(seconds: int) -> str:
    if seconds % 86400 == 0:
        n, unit = seconds // 86400, "day"
    elif seconds % 3600 == 0:
        n, unit = seconds // 3600, "hour"
    elif seconds % 60 == 0:
        n, unit = seconds // 60, "minute"
    else:
        n, unit = seconds, "second"
    return f"{unit}" if n == 1 else f"{n} {unit}s"


def _apply(limits: Limits, override: Any) -> Limits:
    """Fields the override sets (not None) replace those of ``limits`` (host config: may loosen or tighten)."""
    if override is None:
        return limits
    values = {name: getattr(override, name) for name in ("images_per_window", "window_seconds", "max_queued_per_user")}
    return Limits(**{name: getattr(limits, name) if value is None else value for name, value in values.items()})


def tighten(limits: Limits, server: GuildSettingsRecord | None) -> Limits:
    """A server's own settings applied to the host's ``limits``: each may only make them stricter.

    Fewer images, a longer window, fewer jobs waiting; a value that would loosen a limit is ignored.
    """
    if server is None:
        return limits
    images, window, queued = server.images_per_window, server.window_seconds, server.max_queued_per_user
    return Limits(
        images_per_window=limits.images_per_window if images is None else min(limits.images_per_window, images),
        window_seconds=limits.window_seconds if window is None else max(limits.window_seconds, window),
        max_queued_per_user=(limits.max_queued_per_user if queued is None
                             else min(limits.max_queued_per_user, queued)),
    )


def loosening(limits: Limits, *, images_per_window: int | None = None, window_seconds: int | None = None,
              max_queued_per_user: int | None = None) -> list[str]:
    """What in a proposed server setting would exceed the host's ``limits``, one phrase each (empty: fine)."""
    problems = []
    if images_per_window is not None and images_per_window > limits.images_per_window:
        problems.append(f"at most {limits.images_per_window} image(s) per window")
    if window_seconds is not None and window_seconds < limits.window_seconds:
        problems.append(f"a window of at least {limits.window_seconds} seconds")
    if max_queued_per_user is not None and max_queued_per_user > limits.max_queued_per_user:
        problems.append(f"at most {limits.max_queued_per_user} job(s) waiting per member")
    return problems


class RateLimiter:
    """``reserve`` before journalling a job (the journal links the grant to it); ``release`` if it is refused."""

    def __init__(self, db: Database, settings: RateLimitSettings, *, queue_size: int | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        """``queue_size`` (``generation.queue_size``) enables the per-server share of the queue."""
        self.db = db
        self.settings = settings
        self.clock = clock
        self.server_cap = self._server_cap(queue_size)

    def _server_cap(self, queue_size: int | None) -> int | None:
        """Jobs (queued or running) one server may hold at once; None: no limit beyond the queue itself."""
        share = self.settings.max_queue_share_per_guild
        if queue_size is None or share >= 1.0:
            return None
        return max(1, math.floor(share * queue_size))

    def host_limits(self, guild_id: int | None, role_ids: Iterable[int] = ()) -> Limits:
        """What the host's config allows a member here: the base, the server's override, the best role."""
        s = self.settings
        limits = Limits(s.images_per_window, s.window_seconds, s.max_queued_per_user)
        if guild_id is not None:
            limits = _apply(limits, s.guild_overrides.get(guild_id))
        roles: list[Limits] = [_apply(limits, s.role_overrides[r]) for r in role_ids if r in s.role_overrides]
        if not roles:
            return limits
        # The most generous applicable role wins: the highest rate for the window, the most queued jobs.
        best = max(roles, key=lambda lim: (lim.images_per_window / lim.window_seconds, lim.images_per_window))
        return Limits(best.images_per_window, best.window_seconds, max(r.max_queued_per_user for r in roles))

    def _resolve(self, server: GuildSettingsRecord | None, guild_id: int | None, role_ids: Iterable[int]) -> Limits:
        limits = self.host_limits(guild_id, role_ids)
        return tighten(limits, server) if guild_id is not None else limits

    async def reserve(self, guild_id: int | None, user_id: int, images: int,
                      role_ids: Iterable[int] = (), *, interaction_id: int | None = None) -> Reservation:
        """Grant ``images`` to a member or raise :class:`RateLimited`; the grant is written to the ledger.

        ``interaction_id``: the command it is for. A grant of the same command that no job links is an earlier
        try that died before the journal (the inbox replays it): it is replaced, not counted a second time."""
        if images < 1:
            raise ValueError("images must be at least 1")
        role_ids = tuple(role_ids)
        capped = self.server_cap is not None and guild_id is not None
        # Always the server's lock before the member's: one order everywhere, so no two requests deadlock.
        locks = ([("rate-limit-server", guild_id)] if capped else []) + [("rate-limit", guild_id, user_id)]
        async with ledger_transaction(self.db, locks, write=True) as ledger:
            if interaction_id is not None:
                await ledger.drop_unjournalled(guild_id, user_id, interaction_id)
            now = self.clock()
            pending_since = now - timedelta(seconds=PENDING_SECONDS)
            limits = self._resolve(await ledger.guild_settings(guild_id), guild_id, role_ids)
            window_text = _describe_window(limits.window_seconds)
            if images > limits.images_per_window:
                raise RateLimited(now + limits.window, (
                    f"you can ask for at most {limits.images_per_window} image(s) per {window_text}"
                    if limits.images_per_window else "image generation is switched off for you here"), "too_large")
            queued = await ledger.held_jobs(guild_id, user_id, pending_since)
            if queued >= limits.max_queued_per_user:
                raise RateLimited(now, (
                    f"you already have {queued} job(s) waiting or running (at most "
                    f"{limits.max_queued_per_user}); try again when one of your jobs finishes"), "queued")
            if capped:
                held = await ledger.held_jobs(guild_id, None, pending_since)
                if held >= self.server_cap:  # type: ignore[operator]
                    raise RateLimited(now, (
                        f"this server already has {held} job(s) waiting or running, its whole share of the "
                        "bot's queue (other servers use it too); try again when some of them finish"),
                        "server_share")
            entries = await ledger.grants_since(guild_id, user_id, now - limits.window)
            used = sum(n for _, n in entries)
            if used + images > limits.images_per_window:
                retry_at = now + limits.window
                freed = 0
                for at, n in entries:
                    freed += n
                    if used - freed + images <= limits.images_per_window:
                        retry_at = at + limits.window
                        break
                raise RateLimited(retry_at, (
                    f"you have used {used} of your {limits.images_per_window} image(s) per {window_text}"),
                    "window")
            entry_id = await ledger.grant(guild_id, user_id, images, now, interaction_id)
            return Reservation(entry_id, guild_id, user_id, images, now, limits)

    async def release(self, reservation: Reservation) -> None:
        """Give the images back (the job was refused after all, e.g. the queue was full). Idempotent."""
        await drop_grant(self.db, reservation.entry_id)

    async def usage(self, guild_id: int | None, user_id: int, role_ids: Iterable[int] = ()) -> Usage:
        """What a member has used and may use here (``/history`` shows it)."""
        async with ledger_transaction(self.db) as ledger:
            now = self.clock()
            limits = self._resolve(await ledger.guild_settings(guild_id), guild_id, tuple(role_ids))
            entries = await ledger.grants_since(guild_id, user_id, now - limits.window)
            queued = await ledger.held_jobs(guild_id, user_id, now - timedelta(seconds=PENDING_SECONDS))
            resets = entries[0][0] + limits.window if entries else None
            return Usage(sum(n for _, n in entries), limits, queued, resets)


__all__ = ["Limits", "RateLimited", "RateLimiter", "Reservation", "Usage", "PENDING_SECONDS", "loosening",
           "tighten"]
