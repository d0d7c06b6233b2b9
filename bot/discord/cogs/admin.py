"""Server admins (Manage Server): /settings (blocked terms, NSFW policy, limit overrides) and /stats.

Two locks on the door: ``default_permissions`` hides the commands from members without Manage Server in
Discord's UI (a server can change that in its integration settings), and a runtime check refuses them anyway.
A failed check raises ``MissingPermissions``, which the tree's error handler turns into a short ephemeral
denial: a failing check never leaves an interaction unanswered.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.gate.content_filter import term_key
from bot.gate.rate_limits import Limits, loosening, tighten
from bot.storage import repository
from bot.storage.records import GuildSettingsRecord
from bot.text import MESSAGE_CONTENT_LIMIT, truncate

log = logging.getLogger(__name__)

ADMIN_PERMISSION = "manage_guild"
MAX_TERM_CHARS = 100


def is_admin(permissions: discord.Permissions | None) -> bool:
    """Manage Server (administrators have every permission, so they pass too)."""
    return bool(permissions is not None and (permissions.manage_guild or permissions.administrator))


def admin_check(interaction: discord.Interaction) -> bool:
    """The runtime check behind ``default_permissions``; raises so the error handler can answer nicely."""
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage()
    if not is_admin(interaction.permissions):
        raise app_commands.MissingPermissions([ADMIN_PERMISSION])
    return True


def settings_summary(record: GuildSettingsRecord, settings: Any, host: Limits) -> str:
    """What /settings show answers: the limits in force (the server's, never looser than the host's) and why."""
    cf = settings.content_filter
    effective = tighten(host, record)

    def show(own: int | None, value: int, allowed: int) -> str:
        if own is None:
            return f"{value} (the bot's default)"
        return f"**{value}** (this server's; the bot allows {allowed})"

    lines = [
        f"Blocked terms: **{len(record.blocked_terms)}** (`/settings blocked list` shows them)",
        "Shipped content rules: " + (f"**{'on' if record.default_filter_rules else 'off'}**"
                                     if record.default_filter_rules is not None
                                     else f"{'on' if cf.default_rules else 'off'} (config default)"),
        f"NSFW policy override: {f'**{record.nsfw_policy}**' if record.nsfw_policy else 'none'} — "
        f"config: {cf.nsfw_policy} (NSFW channels: {cf.nsfw_channel_policy})",
        f"Images per window: {show(record.images_per_window, effective.images_per_window, host.images_per_window)}",
        f"Window (seconds): {show(record.window_seconds, effective.window_seconds, host.window_seconds)}",
        "Jobs waiting per member: "
        f"{show(record.max_queued_per_user, effective.max_queued_per_user, host.max_queued_per_user)}",
    ]
    return "\n".join(lines)


class Admin(commands.Cog):
    settings_group = app_commands.Group(
        name="settings", description="Server settings for the image bot (Manage Server)", guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )
    blocked_group = app_commands.Group(name="blocked", description="Terms refused in prompts on this server",
                                       parent=settings_group)

    def __init__(self, bot: Any) -> None:
        self.bot = bot
        self.services = bot.services

    async def _reply(self, interaction: discord.Interaction, content: str) -> None:
        """Answer the deferred interaction (every command defers first: the database may be slow)."""
        await interaction.edit_original_response(content=truncate(content, MESSAGE_CONTENT_LIMIT),
                                                 allowed_mentions=discord.AllowedMentions.none())

    # --- blocked terms -----------------------------------------------------------------------------------------

    @blocked_group.command(name="add", description="Refuse prompts containing this term (spacing/leet-proof)")
    @app_commands.check(admin_check)
    @app_commands.describe(term="word or phrase to refuse")
    async def blocked_add(self, interaction: discord.Interaction,
                          term: app_commands.Range[str, 1, MAX_TERM_CHARS]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not term_key(term):
            await self._reply(interaction, "That term has no letters or digits, so it could never match.")
            return
        terms = await repository.add_blocked_terms(self.services.db, interaction.guild_id, [term])
        log.info("blocked term added", extra={"guild": interaction.guild_id, "by": interaction.user.id})
        await self._reply(interaction, f"Added. This server now blocks {len(terms)} term(s).")

    @blocked_group.command(name="remove", description="Stop refusing a term")
    @app_commands.check(admin_check)
    async def blocked_remove(self, interaction: discord.Interaction,
                             term: app_commands.Range[str, 1, MAX_TERM_CHARS]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        before = await repository.list_blocked_terms(self.services.db, interaction.guild_id)
        terms = await repository.remove_blocked_terms(self.services.db, interaction.guild_id, [term])
        if len(terms) == len(before):
            await self._reply(interaction, "That term was not on this server's list.")
            return
        await self._reply(interaction, f"Removed. This server now blocks {len(terms)} term(s).")

    @blocked_group.command(name="list", description="Show this server's blocked terms (only to you)")
    @app_commands.check(admin_check)
    async def blocked_list(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        terms = await repository.list_blocked_terms(self.services.db, interaction.guild_id)
        if not terms:
            await self._reply(interaction, "This server blocks no extra terms (the bot's global list still applies).")
            return
        body = "\n".join(f"• `{t.replace('`', 'ˋ')}`" for t in terms)
        await self._reply(interaction, f"Blocked terms ({len(terms)}):\n{body}")

    # --- policy and limits ----------------------------------------------------------------------------------

    @settings_group.command(name="show", description="This server's overrides and the bot's defaults")
    @app_commands.check(admin_check)
    async def show(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        record = await repository.get_guild_settings(self.services.db, interaction.guild_id)
        host = self.services.rate_limiter.host_limits(interaction.guild_id)
        await self._reply(interaction, settings_summary(record, self.services.settings, host))

    @settings_group.command(name="nsfw", description="What to do with images the safety checker flags")
    @app_commands.check(admin_check)
    @app_commands.describe(policy="block, spoiler or allow (the bot's config may still be stricter); default clears")
    async def nsfw(self, interaction: discord.Interaction,
                   policy: Literal["block", "spoiler", "allow", "default"]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        value = None if policy == "default" else policy
        await repository.update_guild_settings(self.services.db, interaction.guild_id, nsfw_policy=value)
        note = "" if self.services.safety_checker is not None else (
            "\nNote: no safety checker is configured for this bot, so nothing is flagged yet.")
        await self._reply(interaction, f"NSFW policy set to **{policy}**.{note}")

    @settings_group.command(name="rules", description="Whether the bot's shipped content rules apply here")
    @app_commands.check(admin_check)
    @app_commands.describe(apply="on or off for this server; default follows the bot's config")
    async def rules(self, interaction: discord.Interaction, apply: Literal["on", "off", "default"]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        value = {"on": True, "off": False, "default": None}[apply]
        await repository.update_guild_settings(self.services.db, interaction.guild_id, default_filter_rules=value)
        configured = "on" if self.services.settings.content_filter.default_rules else "off"
        effective = configured if value is None else apply
        log.info("shipped content rules switched", extra={"guild": interaction.guild_id, "to": apply})
        await self._reply(interaction, f"The shipped content rules are now **{effective}** on this server"
                          + (" (the bot's default)." if value is None else "."))

    @settings_group.command(name="limits", description="Tighten the rate limits for this server")
    @app_commands.check(admin_check)
    @app_commands.describe(
        images_per_window="images a member may make per window (0 switches generation off; at most the bot's)",
        window_seconds="length of the sliding window in seconds (at least the bot's)",
        max_queued="jobs a member may have waiting at once (at most the bot's)",
        reset="clear all overrides (back to the bot's config)",
    )
    async def limits(
        self,
        interaction: discord.Interaction,
        images_per_window: app_commands.Range[int, 0, 10000] | None = None,
        window_seconds: app_commands.Range[int, 1, 30 * 86400] | None = None,
        max_queued: app_commands.Range[int, 0, 100] | None = None,
        reset: bool = False,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        db, guild_id = self.services.db, interaction.guild_id
        host = self.services.rate_limiter.host_limits(guild_id)
        if reset:
            record = await repository.update_guild_settings(db, guild_id, images_per_window=None,
                                                            window_seconds=None, max_queued_per_user=None)
        else:
            changes: dict[str, int] = {}
            if images_per_window is not None:
                changes["images_per_window"] = images_per_window
            if window_seconds is not None:
                changes["window_seconds"] = window_seconds
            if max_queued is not None:
                changes["max_queued_per_user"] = max_queued
            if not changes:
                await self._reply(interaction, "Give at least one value to change, or `reset: True`.")
                return
            too_loose = loosening(host, **changes)
            if too_loose:
                await self._reply(interaction, (
                    f"Nothing was changed: this bot allows {' and '.join(too_loose)} here, and a server's settings "
                    "can only tighten the bot's limits. Choose values within them."))
                return
            record = await repository.update_guild_settings(db, guild_id, **changes)
        log.info("limits changed", extra={"guild": guild_id, "by": interaction.user.id})
        await self._reply(interaction, "Saved.\n" + settings_summary(record, self.services.settings, host))

    # --- stats ---------------------------------------------------------------------------------------------------

    @app_commands.command(name="stats", description="What this server has generated (Manage Server)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.check(admin_check)
    async def stats(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        stats = await repository.guild_stats(self.services.db, interaction.guild_id)
        worker = self.services.worker
        jobs = ", ".join(f"{status} {n}" for status, n in sorted(stats.jobs_by_status.items())) or "none"
        top = ", ".join(f"<@{user}> ({n})" for user, n in stats.top_members) or "—"
        model = self.services.model
        lines = [
            f"Jobs: {jobs}",
            f"Images: **{stats.images}** by **{stats.members}** member(s)",
            f"Busiest: {top}",
            f"Prompts refused: **{stats.moderation_events}**",
            f"Queue now: **{worker.queued_count}** waiting (holds {worker.queue_size})",
            f"Model: `{getattr(model, 'name', '?')}`" + (" (fallback)" if getattr(model, "is_fallback", False) else ""),
        ]
        await interaction.edit_original_response(content="\n".join(lines),
                                                 allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: Any) -> None:
    await bot.add_cog(Admin(bot))
