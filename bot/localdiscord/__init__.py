"""A local Discord-compatible server (REST v10 + gateway v10) for end-to-end tests and the playground.

Usage::

    server = LocalDiscordServer(token="t")
    await server.start()
    configure_endpoints(server.api_base_url, server.gateway_url)   # bot.discord_endpoints
    ... start the real bot with token "t" ...
    interaction = await server.send_command(server.admin, server.general, "imagine", {"prompt": "a cat"})
    message = await interaction.wait_for_response()
"""

from bot.localdiscord.errors import DiscordError
from bot.localdiscord.events import ServerEvent
from bot.localdiscord.faults import FaultRule, compile_path_pattern
from bot.localdiscord.models import (
    EPHEMERAL,
    LOADING,
    Attachment,
    Channel,
    Guild,
    Interaction,
    Member,
    Message,
    Refusal,
    RestCall,
    Role,
    User,
)
from bot.localdiscord.server import LocalDiscordServer

__all__ = [
    "EPHEMERAL", "LOADING", "Attachment", "Channel", "DiscordError", "FaultRule", "Guild", "Interaction",
    "LocalDiscordServer", "Member", "Message", "Refusal", "RestCall", "Role", "ServerEvent", "User",
    "compile_path_pattern",
]
