"""Admin commands end to end (the REAL bot in-process, the local Discord-compatible server): members are refused
with a clear, private sentence; a member with Manage Server (``server.admin``, alice) is served, and what an
admin sets applies to members' prompts at once.
"""

from __future__ import annotations

import pytest
from e2e_support import E2E, png_of

from bot.bootstrap import RunningBot
from bot.localdiscord import LocalDiscordServer
from bot.storage import repository

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

DENIED = "You need the **Manage Server** permission to use this command."


async def test_stats_denied_to_member_and_shown_to_admin(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob, alice = server.members["bob"], server.admin
    await e2e.imagine(bob, "a bowl of cherries")

    denied = await server.send_command(bob, server.general, "stats")
    answer = await denied.wait_for_response(timeout=10)
    assert answer.ephemeral and answer.visible_to == bob.id
    assert answer.content == DENIED
    assert denied.ack_latency is not None and denied.ack_latency < 3

    allowed = await server.send_command(alice, server.general, "stats")
    answer = await allowed.wait_for_response(timeout=10)
    assert answer.ephemeral and answer.visible_to == alice.id
    assert "Jobs: done 1" in answer.content
    assert f"<@{bob.id}> (1)" in answer.content  # the busiest member
    assert "Model: `tiny`" in answer.content


async def test_settings_denied_to_member_and_admin_blocked_term_applies(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    carol, alice = server.members["carol"], server.admin

    denied = await server.send_command(carol, server.general, "settings blocked add", {"term": "dragon"})
    answer = await denied.wait_for_response(timeout=10)
    assert answer.ephemeral and answer.content == DENIED
    assert await repository.list_blocked_terms(bot.services.db, server.guild.id) == ()
    shown = await server.send_command(carol, server.general, "settings show")
    assert (await shown.wait_for_response(timeout=10)).content == DENIED

    added = await server.send_command(alice, server.general, "settings blocked add", {"term": "dragon"})
    answer = await added.wait_for_response(timeout=10)
    assert answer.ephemeral and "Added" in answer.content and "1 term" in answer.content
    assert await repository.list_blocked_terms(bot.services.db, server.guild.id) == ("dragon",)
    shown = await server.send_command(alice, server.general, "settings show")
    assert "Blocked terms: **1**" in (await shown.wait_for_response(timeout=10)).content

    # It applies to members' prompts at once, disguises included, without echoing the term.
    refused = await server.send_command(carol, server.general, "imagine", {"prompt": "a D.R.4.G.O.N over hills"})
    answer = await refused.wait_for_response(timeout=10)
    assert answer.ephemeral and "refused" in answer.content and "dragon" not in answer.content.lower()
    assert await repository.jobs_for_user(bot.services.db, server.guild.id, carol.id) == []
    _, result = await e2e.imagine(carol, "a castle over hills")
    assert png_of(result) is not None
