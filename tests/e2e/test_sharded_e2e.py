"""``discord.sharded: true`` runs an AutoShardedBot; it must serve /imagine exactly like the plain bot."""

from __future__ import annotations

import discord
import pytest
from e2e_support import E2E, BotFactory, png_of

from bot.localdiscord import LocalDiscordServer
from generation.png import read_parameters

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_sharded_bot_serves_imagine(bots: BotFactory, discord_server: LocalDiscordServer, e2e: E2E) -> None:
    running = await bots.start(bots.settings(discord={"sharded": True, "shard_count": 2}))
    assert isinstance(running.bot, discord.AutoShardedClient)
    assert sorted(running.bot.shards) == [0, 1]
    assert discord_server.identify_count == 2  # one gateway session per shard

    _, result = await e2e.imagine(discord_server.members["bob"], "a lantern in fog", seed=7)

    png = png_of(result)
    assert png is not None
    parameters = read_parameters(png)
    assert parameters is not None and parameters.startswith("a lantern in fog\n") and "Seed: 7," in parameters
