"""A loopback Discord: REST API v10 + gateway v10 over aiohttp, enough for a real discord.py 2.x bot.

:class:`LocalDiscordServer` composes the parts and is what tests and the playground hold:

* :attr:`world` (``world.py``) -- guilds, channels, roles, members, messages, commands;
* :attr:`hub` (``events.py``) -- gateway dispatches and subscriber events;
* :attr:`router` (``router.py``) with one ``routes_*.py`` module per resource, :attr:`faults` (``faults.py``);
* :attr:`gateway` (``gateway.py``) -- the websocket sessions;
* :attr:`actions` (``actions.py``) -- acting as guild members.

For brevity the server re-exposes the names tests use (``server.send_command``, ``server.guild``,
``server.fail_route``...). The bot reaches it only through ``configure_endpoints(server.api_base_url,
server.gateway_url)`` and its token.

It refuses what real Discord refuses (``rules/``): malformed command registrations, message bodies over
Discord's limits, uploads too large, callbacks that do not fit the interaction, actions the bot's permissions
do not allow, unknown emoji, IDENTIFYs with intents the app may not use; each refusal is recorded in
:attr:`refusals`.

Discord rules kept because the bot must cope with them: the ``Authorization: Bot <token>`` header, an
interaction must be acknowledged within 3 s (else 404 code 10062), interaction tokens expire after 15 min
(401 code 50027), 429s carry ``retry_after`` and ``X-RateLimit-*``/``Retry-After`` headers, ephemeral
messages are never dispatched, every non-ephemeral message the bot creates comes back as MESSAGE_CREATE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bot.localdiscord.actions import MemberActions
from bot.localdiscord.events import EventHub
from bot.localdiscord.faults import Faults
from bot.localdiscord.gateway import Gateway
from bot.localdiscord.messages import MessageWriter
from bot.localdiscord.models import Channel, Interaction, Message, Refusal, Waiter
from bot.localdiscord.router import Router
from bot.localdiscord.routes_app import AppRoutes
from bot.localdiscord.routes_commands import CommandRoutes
from bot.localdiscord.routes_guilds import GuildRoutes
from bot.localdiscord.routes_interactions import InteractionRoutes
from bot.localdiscord.routes_messages import MessageRoutes
from bot.localdiscord.settings import ServerSettings
from bot.localdiscord.world import World

_log = logging.getLogger(__name__)

MessagePredicate = Callable[[Message], Any]


class LocalDiscordServer:
    """The local Discord. Start with ``await server.start()`` (or ``async with``), then point the bot at
    :attr:`api_base_url` / :attr:`gateway_url`. ``populate`` creates a default guild (see
    :meth:`World.populate`)."""

    def __init__(
        self,
        *,
        token: str = "local-bot-token",
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl_seconds: float = 15 * 60,
        ack_deadline_seconds: float = 3.0,
        heartbeat_interval_ms: int = 41250,
        attachment_size_limit: int = 10 * 1024 * 1024,
        request_size_limit: int = 25 * 1024 * 1024,
        privileged_intents: int = 0,
        bot_name: str = "imagine-bot",
        populate: bool = True,
    ) -> None:
        self.settings = ServerSettings(token=token, host=host, port=port, token_ttl_seconds=token_ttl_seconds,
                                       ack_deadline_seconds=ack_deadline_seconds,
                                       heartbeat_interval_ms=heartbeat_interval_ms,
                                       attachment_size_limit=attachment_size_limit,
                                       request_size_limit=request_size_limit, privileged_intents=privileged_intents)
        # Every request or IDENTIFY refused the way Discord would (assert it stays empty in bot tests).
        self.refusals: list[Refusal] = []
        self.waiter = Waiter(context=lambda: self.router.recent())
        self.hub = EventHub(self.waiter)
        self.world = World(self.settings, self.hub, bot_name=bot_name)
        self.gateway = Gateway(self.settings, self.world, self.hub, self.refusals)
        self.faults = Faults()
        self.router = Router(self.settings, self.faults, self.waiter, self.refusals)
        writer = MessageWriter(self.world, self.settings)
        for routes in (AppRoutes(self.world, self.settings), CommandRoutes(self.world),
                       MessageRoutes(self.world, writer), GuildRoutes(self.world),
                       InteractionRoutes(self.world, writer, self.settings)):
            routes.register(self.router)
        self.actions = MemberActions(self.world, self.hub, self.settings)
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        if populate:
            self.world.populate()

        world = self.world
        # The world's objects (the containers are shared, never replaced).
        self.bot_user, self.application_id = world.bot_user, world.application_id
        self.users, self.guilds, self.channels = world.users, world.guilds, world.channels
        self.messages, self.attachments, self.interactions = world.messages, world.attachments, world.interactions
        self.global_commands, self.guild_commands = world.global_commands, world.guild_commands
        self.members = world.members
        if populate:
            self.guild, self.admin = world.guild, world.admin
            self.general, self.art, self.nsfw_channel = world.general, world.art, world.nsfw_channel
        self.add_user, self.add_guild, self.add_role = world.add_user, world.add_guild, world.add_role
        self.add_channel, self.add_member, self.add_emoji = world.add_channel, world.add_member, world.add_emoji
        self.permissions_in, self.withhold_permission, self.grant_permission, self.clear_overwrites = (
            world.permissions_in, world.withhold_permission, world.grant_permission, world.clear_overwrites)
        self.channel_by_name, self.get_member, self.find_command = (
            world.channel_by_name, world.get_member, world.find_command)
        self.store_attachment, self.bot_messages = world.store_attachment, world.bot_messages
        # Acting as members.
        actions = self.actions
        self.send_command, self.press_button, self.select = actions.send_command, actions.press_button, actions.select
        self.submit_modal, self.autocomplete = actions.submit_modal, actions.autocomplete
        self.react, self.unreact, self.send_message = actions.react, actions.unreact, actions.send_message
        # Observing.
        self.rest_log, self.unknown_routes, self.calls = self.router.rest_log, self.router.unknown_routes, \
            self.router.calls
        self.events, self.subscribe, self.wait_for_event = self.hub.events, self.hub.subscribe, \
            self.hub.wait_for_event
        self.wait_until = self.waiter.until
        # Faults.
        self.fail_route, self.clear_faults = self.faults.fail_route, self.faults.clear
        self.drop_gateway, self.invalidate_session = self.gateway.drop, self.gateway.invalidate_sessions
        self.request_reconnect = self.gateway.request_reconnect

    # ------------------------------------------------------------------ settings that change at run time

    @property
    def token(self) -> str:
        return self.settings.token

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def ack_deadline_seconds(self) -> float:
        return self.settings.ack_deadline_seconds

    @ack_deadline_seconds.setter
    def ack_deadline_seconds(self, value: float) -> None:
        self.settings.ack_deadline_seconds = value

    @property
    def token_ttl_seconds(self) -> float:
        return self.settings.token_ttl_seconds

    @token_ttl_seconds.setter
    def token_ttl_seconds(self, value: float) -> None:
        self.settings.token_ttl_seconds = value

    @property
    def attachment_size_limit(self) -> int:
        return self.settings.attachment_size_limit

    @property
    def privileged_intents(self) -> int:
        """GUILD_MEMBERS (1 << 1), GUILD_PRESENCES (1 << 8), MESSAGE_CONTENT (1 << 15) enabled for the app."""
        return self.settings.privileged_intents

    @privileged_intents.setter
    def privileged_intents(self, value: int) -> None:
        self.settings.privileged_intents = value

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def api_base_url(self) -> str:
        """What ``settings.discord.api_base_url`` should be."""
        return self.settings.api_base_url

    @property
    def gateway_url(self) -> str:
        """What ``settings.discord.gateway_url`` should be."""
        return self.settings.gateway_url

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/attachments/{id}/{filename}", self._serve_attachment)
        app.router.add_route("*", "/{tail:.*}", self.router.handle)
        return app

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, read back into :attr:`port`)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.settings.port = server.sockets[0].getsockname()[1]
        self.world.refresh_attachment_urls()
        _log.info("local Discord listening on %s", self.base_url)

    async def close(self) -> None:
        await self.gateway.close()
        self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalDiscordServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve_attachment(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["id"]
        attachment = self.attachments.get(int(key)) if key.isdigit() else None
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(body=attachment.data, content_type=attachment.content_type or "application/octet-stream")

    # ------------------------------------------------------------------ gateway state

    @property
    def sessions(self) -> dict[str, Any]:
        return self.gateway.sessions

    @property
    def identify_count(self) -> int:
        return self.gateway.identify_count

    @property
    def resume_count(self) -> int:
        return self.gateway.resume_count

    @property
    def gateway_log(self) -> list[dict[str, Any]]:
        return self.gateway.log

    @property
    def connected(self) -> bool:
        """True when a session has a live, identified connection."""
        return self.gateway.connected

    async def wait_until_connected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        await self.waiter.until(lambda: self.connected, timeout, "a gateway session")

    # ------------------------------------------------------------------ waiting for the bot

    async def wait_for_message(self, predicate: MessagePredicate | None = None,
                               timeout: float = 10.0, *, include_existing: bool = False,  # noqa: ASYNC109
                               channel: Channel | int | None = None) -> Message:
        """The first bot message created or edited from now on (or already there, with ``include_existing``)
        that is not a loading placeholder and matches ``predicate``. Edits count: a message matches again
        each time it changes."""
        world = self.world
        seen = {} if include_existing else {m.id: m.edits for m in world.bot_messages(include_deleted=True)}

        def find() -> Message | None:
            for message in world.bot_messages(channel=channel):
                if message.loading or seen.get(message.id, -1) == message.edits:
                    continue
                if predicate is None or predicate(message):
                    return message
            return None

        return await self.waiter.until(find, timeout, "a bot message matching the predicate")

    def ack_latency(self, interaction: Interaction | int) -> float | None:
        """Seconds between dispatching the interaction and the bot's callback (None if never acknowledged)."""
        item = self.interactions[interaction if isinstance(interaction, int) else interaction.id]
        return item.ack_latency
