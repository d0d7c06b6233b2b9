"""A server's content-filter choices: its extra blocked terms and whether the shipped rules apply to it.

The gate reads them for every request (one query); ``/settings`` changes the shipped-rules switch through
:func:`set_default_rules`, so the column has one reader and one writer, both here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from bot.storage import repository
from bot.storage.db import Database
from bot.storage.models import GuildSettings
from bot.timers.clock import utcnow


@dataclass(frozen=True)
class GuildFilterSettings:
    """``default_rules`` is ``None`` where the server never chose: ``content_filter.default_rules`` decides."""

    blocked_terms: tuple[str, ...] = ()
    default_rules: bool | None = None


async def guild_filter_settings(db: Database, guild_id: int) -> GuildFilterSettings:
    """The server's extra terms and shipped-rules choice; a server never configured gets the defaults."""
    async with db.session() as session:
        row = (await session.execute(
            select(GuildSettings.blocked_terms, GuildSettings.default_filter_rules)
            .where(GuildSettings.guild_id == guild_id)
        )).one_or_none()
    if row is None:
        return GuildFilterSettings()
    return GuildFilterSettings(tuple(row.blocked_terms or ()), row.default_filter_rules)


async def set_default_rules(db: Database, guild_id: int, enabled: bool | None) -> GuildFilterSettings:
    """Switch the shipped rules on or off for a server; ``None`` hands the choice back to the config."""
    await repository.update_guild_settings(db, guild_id)  # creates the row the first time, safely under races
    async with db.session(write=True) as session:
        await session.execute(
            update(GuildSettings).where(GuildSettings.guild_id == guild_id)
            .values(default_filter_rules=enabled, updated_at=utcnow())
        )
    return await guild_filter_settings(db, guild_id)
