"""What the bot may do in a channel, and telling a server's admins (once) what a withheld permission costs.

The invite asks for exactly :data:`INVITE_PERMISSIONS`. Any of them may be withheld in a channel (a role
edit, a channel overwrite); the bot then keeps working with less (results without files, reactions left in
place) instead of failing silently, and says so to the admins once per server and permission.
Permissions are computed by discord.py from the cached guild, roles and overwrites
(``channel.permissions_for(guild.me)``); ``None`` means "not known here" and the caller just tries.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

log = logging.getLogger(__name__)

# What the README's invite link asks for; nothing else is needed (no Manage Messages).
INVITE_PERMISSIONS = discord.Permissions(
    send_messages=True, attach_files=True, embed_links=True, add_reactions=True, read_message_history=True,
)
NO_MENTIONS = discord.AllowedMentions.none()


def permission_label(name: str) -> str:
    """``attach_files`` -> ``Attach Files`` (the name Discord's settings show)."""
    return name.replace("_", " ").title()


def missing_invite_permissions(permissions: discord.Permissions) -> list[str]:
    """The invite's permissions that ``permissions`` lacks, as labels (an admin reads them)."""
    return [permission_label(name) for name, wanted in INVITE_PERMISSIONS if wanted and not getattr(permissions, name)]


def permissions_line(permissions: discord.Permissions) -> str:
    """What /settings show says about the bot's permissions in the channel it was asked in."""
    missing = missing_invite_permissions(permissions)
    if not missing:
        return "My permissions in this channel: everything the invite asks for."
    return f"My permissions in this channel: missing **{', '.join(missing)}** (the invite asks for them)."


def bot_permissions_in(bot: Any, channel_id: int) -> discord.Permissions | None:
    """The bot's permissions in a cached guild channel (roles and overwrites applied), else None."""
    channel = bot.get_channel(channel_id)
    guild = getattr(channel, "guild", None)
    me = getattr(guild, "me", None)
    if channel is None or me is None or not hasattr(channel, "permissions_for"):
        return None
    return channel.permissions_for(me)


class AdminNotices:
    """One note per server and missing permission (per process): in the channel where it mattered, without
    mentions, and in the log. A note that cannot be posted is only logged."""

    def __init__(self, bot: Any) -> None:
        self.bot = bot
        self._told: set[tuple[int | None, str]] = set()

    async def missing(self, guild_id: int | None, channel_id: int, permission: str, consequence: str) -> None:
        """Say (once) that ``permission`` (e.g. ``manage_messages``) is missing and what that means."""
        key = (guild_id, permission)
        if key in self._told:
            return
        self._told.add(key)
        label = permission_label(permission)
        log.warning("missing the %s permission: %s", label, consequence,
                    extra={"guild": guild_id, "channel": channel_id})
        text = (f"⚠️ For the server admins: I don't have the **{label}** permission in <#{channel_id}>, so "
                f"{consequence}. Give my role that permission to change this (this note is shown once).")
        channel = self.bot.get_partial_messageable(channel_id, guild_id=guild_id)
        try:
            await channel.send(text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            log.info("could not post the missing-permission note in %s: %s", channel_id, exc)
