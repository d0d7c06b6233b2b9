"""Pointing discord.py at another Discord (the local server) through config, and back."""

from __future__ import annotations

import discord
import yarl

from bot.config import DISCORD_API, DISCORD_GATEWAY
from bot.discord.endpoints import configure_endpoints, current_endpoints, reset_endpoints


def test_configure_endpoints_points_discord_py_and_is_noop_for_defaults() -> None:
    reset_endpoints()  # whatever an earlier test left, start from discord.py's own defaults
    original = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    try:
        configure_endpoints("http://127.0.0.1:9/api/v10/", "ws://127.0.0.1:9/gateway")
        assert discord.http.Route("GET", "/users/@me").url == "http://127.0.0.1:9/api/v10/users/@me"
        gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        assert gateway == yarl.URL("ws://127.0.0.1:9/gateway")
        configure_endpoints(DISCORD_API, DISCORD_GATEWAY)
        now = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        assert now == original
        assert current_endpoints() == ("https://discord.com/api/v10", "wss://gateway.discord.gg/")
    finally:
        reset_endpoints()
