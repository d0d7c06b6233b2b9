"""The invite's permissions, and what the bot says when one is withheld."""

from __future__ import annotations

import discord

from bot.discord.permissions import INVITE_PERMISSIONS, missing_invite_permissions, permissions_line


def test_the_invite_asks_for_exactly_what_the_readme_lists() -> None:
    granted = {name for name, value in INVITE_PERMISSIONS if value}
    assert granted == {"send_messages", "attach_files", "embed_links", "add_reactions", "read_message_history"}
    assert not INVITE_PERMISSIONS.manage_messages


def test_missing_permissions_are_named_as_discord_shows_them() -> None:
    assert missing_invite_permissions(INVITE_PERMISSIONS) == []
    assert missing_invite_permissions(discord.Permissions.all()) == []
    withheld = INVITE_PERMISSIONS & ~discord.Permissions(attach_files=True, add_reactions=True)
    assert sorted(missing_invite_permissions(withheld)) == ["Add Reactions", "Attach Files"]
    assert "missing **Add Reactions, Attach Files**" in permissions_line(withheld)
    assert "everything the invite asks for" in permissions_line(INVITE_PERMISSIONS)
