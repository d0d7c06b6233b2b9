"""Discord's permission algorithm: base from @everyone and roles, then overwrites @everyone -> roles -> member."""

from __future__ import annotations

import pytest

from bot.localdiscord import LocalDiscordServer
from bot.localdiscord.permissions import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    ATTACH_FILES,
    EMBED_LINKS,
    MANAGE_MESSAGES,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    base_permissions,
    channel_permissions,
)

BASE = VIEW_CHANNEL | SEND_MESSAGES | ATTACH_FILES | EMBED_LINKS


@pytest.mark.parametrize(("case", "everyone", "roles", "member", "expected"), [
    ("no_overwrites", None, [], None, BASE),
    ("everyone_deny", (0, ATTACH_FILES), [], None, BASE & ~ATTACH_FILES),
    ("role_allow_beats_everyone_deny", (0, ATTACH_FILES), [(ATTACH_FILES, 0)], None, BASE),
    ("role_allow_beats_other_role_deny", None, [(0, ATTACH_FILES), (ATTACH_FILES, 0)], None, BASE),
    ("member_deny_beats_role_allow", None, [(MANAGE_MESSAGES, 0)], (0, MANAGE_MESSAGES), BASE),
    ("member_allow_beats_role_deny", None, [(0, MANAGE_MESSAGES)], (MANAGE_MESSAGES, 0), BASE | MANAGE_MESSAGES),
    ("no_view_means_nothing", (0, VIEW_CHANNEL), [], None, 0),
    ("no_send_means_no_files_or_embeds", None, [], (0, SEND_MESSAGES), VIEW_CHANNEL),
])
def test_channel_overwrites_in_discords_order(case: str, everyone: tuple[int, int] | None,
                                              roles: list[tuple[int, int]], member: tuple[int, int] | None,
                                              expected: int) -> None:
    assert channel_permissions(BASE, everyone, roles, member) == expected


def test_owner_and_administrator_get_everything() -> None:
    assert base_permissions(BASE, [], owner=True) == ALL_PERMISSIONS
    assert base_permissions(BASE, [ADMINISTRATOR], owner=False) == ALL_PERMISSIONS
    everything = base_permissions(BASE, [ADMINISTRATOR], owner=False)
    assert channel_permissions(everything, (0, VIEW_CHANNEL), [], (0, ALL_PERMISSIONS)) == ALL_PERMISSIONS


async def test_interaction_carries_channel_permissions() -> None:
    """``member.permissions`` and ``app_permissions`` of an interaction are computed in its channel."""
    server = LocalDiscordServer()
    await server.start()
    try:
        server.withhold_permission(ATTACH_FILES, server.art)
        server.withhold_permission(EMBED_LINKS, server.art, member=server.members["bob"])
        server.world.guild_commands[server.guild.id] = {1: {"id": "1", "name": "ping", "type": 1, "options": []}}
        interaction = await server.send_command(server.members["bob"], server.art, "ping")
        assert not int(interaction.payload["app_permissions"]) & ATTACH_FILES
        assert not int(interaction.payload["member"]["permissions"]) & EMBED_LINKS
        assert int(interaction.payload["member"]["permissions"]) & ATTACH_FILES
    finally:
        await server.close()
