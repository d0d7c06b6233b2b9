"""A loopback Discord: REST API v10 + gateway v10 over aiohttp, enough for a real discord.py 2.x bot.

The bot reaches it only through ``configure_endpoints(server.api_base_url, server.gateway_url)`` and its token.
Tests and the playground drive it as guild members through :class:`bot.localdiscord.harness.HarnessMixin`
(``send_command``, ``press_button``, ``react``, ``wait_for_message``, ``subscribe``...).

Discord rules kept because the bot must cope with them: the ``Authorization: Bot <token>`` header, an
interaction must be acknowledged within 3 s (else 404 code 10062), interaction tokens expire after 15 min
(401 code 50027), 429s carry ``retry_after`` and ``X-RateLimit-*``/``Retry-After`` headers, ephemeral
messages are never dispatched, every non-ephemeral message the bot creates comes back as MESSAGE_CREATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from bot.localdiscord import gateway as gw
from bot.localdiscord.harness import HarnessMixin
from bot.localdiscord.models import (
    ADMINISTRATOR,
    BOT_PERMISSIONS,
    EPHEMERAL,
    EVERYONE_PERMISSIONS,
    LOADING,
    MANAGE_GUILD,
    Attachment,
    Channel,
    Guild,
    Interaction,
    Member,
    Message,
    RestCall,
    Role,
    User,
    Waiter,
    emoji_payload,
    iso_now,
    snowflake,
)

_log = logging.getLogger(__name__)

Handler = Callable[["Call"], Awaitable[web.StreamResponse]]
EventCallback = Callable[[dict[str, Any]], Any]


class DiscordError(Exception):
    """Raised by route handlers; becomes Discord's JSON error body ``{"code", "message"}``."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


def unknown(kind: str, code: int) -> DiscordError:
    return DiscordError(404, code, f"Unknown {kind}")


@dataclass
class Call:
    """One parsed REST request handed to a route handler."""

    request: web.Request
    params: dict[str, str]
    json: Any
    files: list[tuple[int, str, bytes, str | None]]

    @property
    def query(self) -> Any:
        return self.request.query


@dataclass
class FaultRule:
    """An injected failure: the next ``times`` requests matching ``method`` and ``pattern`` get ``status``."""

    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float
    is_global: bool = False
    hits: int = 0
    after: bool = False  # handle the request first, then answer ``status`` (it took effect; the answer was lost)

    @property
    def remaining(self) -> int:
        return self.times - self.hits


def compile_path_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """``/webhooks/*/*`` or ``/webhooks/{app}/{token}``: ``*``/``{name}`` match one segment, ``**`` anything.

    Matched against the path without the ``/api/v10`` prefix; a compiled regex is used as is (fullmatch).
    """
    if isinstance(pattern, re.Pattern):
        return pattern
    pattern = pattern.split("?", 1)[0]
    pattern = re.sub(r"^/api/v\d+", "", pattern)
    out = []
    for token in re.split(r"(\*\*|\*|\{[^}/]+\})", pattern):
        if token == "**":
            out.append(".*")
        elif token == "*" or (token.startswith("{") and token.endswith("}")):
            out.append("[^/]+")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


@dataclass
class _Route:
    method: str
    regex: re.Pattern[str]
    handler: Handler
    auth: str  # "bot": the bot token is required; "webhook": optional, but checked when sent


@dataclass
class ServerEvent:
    """A channel event as subscribers receive it (``to_dict`` is JSON-able)."""

    type: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, "type": self.type, "time": self.time}


class LocalDiscordServer(HarnessMixin):
    """The local Discord. Start with ``await server.start()`` (or ``async with``), then point the bot at
    :attr:`api_base_url` / :attr:`gateway_url`. ``populate`` creates a default guild (see :meth:`_populate`)."""

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
        bot_name: str = "imagine-bot",
        populate: bool = True,
    ) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.token_ttl_seconds = token_ttl_seconds
        self.ack_deadline_seconds = ack_deadline_seconds
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.attachment_size_limit = attachment_size_limit

        self.bot_user = User(snowflake(), bot_name, bot=True)
        self.application_id = self.bot_user.id
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.interactions: dict[int, Interaction] = {}
        self._interactions_by_token: dict[str, Interaction] = {}
        self.global_commands: dict[int, dict[str, Any]] = {}
        self.guild_commands: dict[int, dict[int, dict[str, Any]]] = {}

        self.rest_log: list[RestCall] = []
        self.unknown_routes: list[tuple[str, str]] = []
        self.events: list[ServerEvent] = []
        self.sessions: dict[str, gw.GatewaySession] = {}
        self.identify_count = 0
        self.gateway_log: list[dict[str, Any]] = []  # one entry per websocket: query, compression, time
        self.resume_count = 0
        self._faults: list[FaultRule] = []
        self._subscribers: list[EventCallback] = []
        self._connections: set[gw.GatewayConnection] = set()
        self._waiter = Waiter()
        self._routes: list[_Route] = []
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.app = self._build_app()

        self.guild: Guild
        self.members: dict[str, Member] = {}
        self.admin: Member
        self.general: Channel
        self.art: Channel
        self.nsfw_channel: Channel
        if populate:
            self._populate()

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base_url(self) -> str:
        """What ``settings.discord.api_base_url`` should be."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What ``settings.discord.gateway_url`` should be."""
        return f"ws://{self.host}:{self.port}/gateway"

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, read back into :attr:`port`)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]
        for attachment in self.attachments.values():
            attachment.url = self._attachment_url(attachment)
        _log.info("local Discord listening on %s", self.base_url)

    async def close(self) -> None:
        for conn in list(self._connections):
            await conn.close(1001)
        for task in list(self._background):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalDiscordServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ world

    def _populate(self) -> None:
        """Default guild: #general, #art, #nsfw-art (NSFW); roles @everyone, Admin (administrator +
        manage guild), Artist and the bot's managed role; members olivia (owner), alice (Admin), bob, carol
        (Artist) and the bot."""
        owner = self.add_user("olivia")
        guild = self.add_guild("Imagine Test Guild", owner=owner)
        admin_role = self.add_role(guild, "Admin", ADMINISTRATOR | MANAGE_GUILD, position=3)
        artist = self.add_role(guild, "Artist", 0, position=1)
        self.guild = guild
        self.general = self.add_channel(guild, "general")
        self.art = self.add_channel(guild, "art")
        self.nsfw_channel = self.add_channel(guild, "nsfw-art", nsfw=True)
        self.members["olivia"] = guild.members[owner.id]
        self.admin = self.members["alice"] = self.add_member(guild, "alice", roles=[admin_role])
        self.members["bob"] = self.add_member(guild, "bob")
        self.members["carol"] = self.add_member(guild, "carol", roles=[artist])

    def add_user(self, username: str, *, bot: bool = False) -> User:
        user = User(snowflake(), username, bot=bot, global_name=username.title())
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, *, owner: User | None = None) -> Guild:
        """A guild with @everyone and the bot's managed role; the bot is a member. Dispatches GUILD_CREATE to
        connected sessions (so a guild added later shows up like the bot joining it)."""
        owner = owner or self.add_user(f"{name.lower().replace(' ', '-')}-owner")
        guild = Guild(snowflake(), name, owner.id)
        guild.roles.append(Role(guild.id, "@everyone", EVERYONE_PERMISSIONS, position=0))
        bot_role = Role(snowflake(), self.bot_user.username, BOT_PERMISSIONS, position=2, managed=True,
                        bot_id=self.bot_user.id)
        guild.roles.append(bot_role)
        guild.members[owner.id] = Member(owner, guild.id)
        guild.members[self.bot_user.id] = Member(self.bot_user, guild.id, [bot_role.id])
        self.guilds[guild.id] = guild
        self._dispatch_all("GUILD_CREATE", guild.payload(full=True))
        return guild

    def add_role(self, guild: Guild, name: str, permissions: int = 0, *, position: int = 1) -> Role:
        role = Role(snowflake(), name, permissions, position=position)
        guild.roles.append(role)
        self._dispatch_all("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()})
        return role

    def add_channel(self, guild: Guild, name: str, *, nsfw: bool = False, topic: str | None = None) -> Channel:
        channel = Channel(snowflake(), name, guild.id, nsfw=nsfw, position=len(guild.channels), topic=topic)
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        self._dispatch_all("CHANNEL_CREATE", channel.payload())
        return channel

    def add_member(self, guild: Guild, username: str, *, roles: list[Role] | tuple[Role, ...] = (),
                   admin: bool = False) -> Member:
        """A new user joining ``guild``; ``admin=True`` also gives them the guild's first administrator role."""
        user = self.add_user(username)
        role_ids = [r.id for r in roles]
        if admin:
            admin_role = next((r for r in guild.roles if r.permissions & ADMINISTRATOR), None)
            if admin_role is None:
                admin_role = self.add_role(guild, "Admin", ADMINISTRATOR | MANAGE_GUILD, position=3)
            role_ids.append(admin_role.id)
        member = Member(user, guild.id, role_ids)
        guild.members[user.id] = member
        self.members.setdefault(username, member)
        self._dispatch_all("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(guild.id)})
        return member

    def channel_by_name(self, name: str, guild: Guild | None = None) -> Channel:
        guild = guild or self.guild
        for channel in guild.channels:
            if channel.name == name.lstrip("#"):
                return channel
        raise KeyError(f"no channel #{name} in {guild.name}; have {[c.name for c in guild.channels]}")

    def _guild_of(self, channel: Channel) -> Guild | None:
        return self.guilds.get(channel.guild_id) if channel.guild_id is not None else None

    def _bot_member(self, guild_id: int | None) -> Member | None:
        if guild_id is None:
            return None
        return self.guilds[guild_id].members.get(self.bot_user.id)

    # ------------------------------------------------------------------ events, gateway dispatch

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event_dict)`` for every channel event (message_create/update/delete,
        reaction_add/remove, interaction_create, interaction_response). Coroutine functions are scheduled as
        tasks. Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        event = ServerEvent(kind, data)
        self.events.append(event)
        payload = event.to_dict()
        for callback in list(self._subscribers):
            try:
                result = callback(payload)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:  # a broken subscriber must not break the bot's request
                _log.exception("localdiscord subscriber failed")
        self._waiter.notify()

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _dispatch_all(self, event: str, data: dict[str, Any]) -> None:
        for session in self.sessions.values():
            if not session.invalid:
                session.dispatch(event, data)

    def _publish_create(self, message: Message) -> None:
        if not message.ephemeral:
            self._dispatch_all("MESSAGE_CREATE", message.payload(self_id=self.bot_user.id))
        self._emit("message_create", {"message": message.to_event()})

    def _publish_update(self, message: Message) -> None:
        if not message.ephemeral:
            self._dispatch_all("MESSAGE_UPDATE", message.payload(self_id=self.bot_user.id))
        self._emit("message_update", {"message": message.to_event()})

    def _publish_delete(self, message: Message) -> None:
        data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if not message.ephemeral:
            self._dispatch_all("MESSAGE_DELETE", data)
        self._emit("message_delete", {**data, "ephemeral": message.ephemeral})

    # ------------------------------------------------------------------ fault injection

    def fail_route(self, method: str, path_pattern: str | re.Pattern[str], status: int = 429, *, times: int = 1,
                   retry_after: float = 0.2, is_global: bool = False, after: bool = False) -> FaultRule:
        """Answer the next ``times`` matching requests with ``status`` (429 with Discord's rate-limit body
        and headers, or e.g. 500/502). ``path_pattern`` is e.g. ``"/webhooks/*/*"`` (see
        :func:`compile_path_pattern`). The returned rule's ``hits`` counts injected failures. ``after``: the
        request is handled first (a message is created) and only its answer is replaced by the failure."""
        rule = FaultRule(method.upper(), compile_path_pattern(path_pattern), status, times, retry_after, is_global,
                         after=after)
        self._faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        self._faults.clear()

    def drop_gateway(self, *, abort: bool = True, code: int = 4000) -> int:
        """Break every gateway connection so the client must RESUME. ``abort`` drops TCP without a close
        frame (a network failure); otherwise closes with ``code`` (4000 = unknown error, resumable).
        The sessions stay valid and buffer dispatches meanwhile. Returns how many were dropped."""
        dropped = 0
        for session in self.sessions.values():
            conn = session.connection
            if conn is None:
                continue
            session.connection = None
            dropped += 1
            if abort:
                conn.abort()
            else:
                self._spawn(conn.close(code))
        return dropped

    def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send INVALID_SESSION (op 9) to every connected session; not resumable forces a new IDENTIFY."""
        for session in self.sessions.values():
            if session.connection is not None:
                session.connection.send({"op": gw.INVALID_SESSION, "d": resumable, "s": None, "t": None})
            if not resumable:
                session.invalid = True

    def request_reconnect(self) -> None:
        """Send RECONNECT (op 7): the client closes and resumes."""
        for session in self.sessions.values():
            if session.connection is not None:
                session.connection.send({"op": gw.RECONNECT, "d": None, "s": None, "t": None})

    @property
    def connected(self) -> bool:
        """True when a session has a live, identified connection."""
        return any(s.connection is not None and not s.invalid for s in self.sessions.values())

    async def wait_until_connected(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        await self._wait_until(lambda: self.connected, timeout, "a gateway session")

    # ------------------------------------------------------------------ app and dispatcher

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway_handler)
        app.router.add_get("/attachments/{id}/{filename}", self._serve_attachment)
        app.router.add_route("*", "/{tail:.*}", self._api_handler)
        self._register_routes()
        return app

    def _route(self, method: str, path: str, handler: Handler, auth: str = "bot") -> None:
        regex = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path))
        self._routes.append(_Route(method, regex, handler, auth))

    def _register_routes(self) -> None:
        r = self._route
        r("GET", "/gateway", self._get_gateway, auth="none")
        r("GET", "/gateway/bot", self._get_gateway_bot)
        r("GET", "/users/@me", self._get_me)
        r("GET", "/users/@me/guilds", self._get_my_guilds)
        r("POST", "/users/@me/channels", self._create_dm)
        r("GET", "/users/{user_id}", self._get_user)
        r("GET", "/oauth2/applications/@me", self._get_application)
        r("GET", "/applications/@me", self._get_application)
        for prefix in ("/applications/{app_id}/commands", "/applications/{app_id}/guilds/{guild_id}/commands"):
            r("GET", prefix, self._list_commands)
            r("PUT", prefix, self._put_commands)
            r("POST", prefix, self._post_command)
            r("GET", prefix + "/{command_id}", self._get_command)
            r("PATCH", prefix + "/{command_id}", self._patch_command)
            r("DELETE", prefix + "/{command_id}", self._delete_command)
        r("GET", "/applications/{app_id}/guilds/{guild_id}/commands/permissions", self._empty_list)
        r("POST", "/interactions/{interaction_id}/{token}/callback", self._interaction_callback, auth="webhook")
        r("POST", "/webhooks/{app_id}/{token}", self._followup_create, auth="webhook")
        for mid in ("@original", "{message_id}"):
            path = "/webhooks/{app_id}/{token}/messages/" + mid
            r("GET", path, self._webhook_message_get, auth="webhook")
            r("PATCH", path, self._webhook_message_edit, auth="webhook")
            r("DELETE", path, self._webhook_message_delete, auth="webhook")
        r("GET", "/channels/{channel_id}", self._get_channel)
        r("POST", "/channels/{channel_id}/typing", self._no_content)
        r("GET", "/channels/{channel_id}/messages", self._list_messages)
        r("POST", "/channels/{channel_id}/messages", self._create_message)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message)
        reactions = "/channels/{channel_id}/messages/{message_id}/reactions"
        r("PUT", reactions + "/{emoji}/@me", self._add_own_reaction)
        r("DELETE", reactions + "/{emoji}/@me", self._remove_own_reaction)
        r("DELETE", reactions + "/{emoji}/{user_id}", self._remove_user_reaction)
        r("GET", reactions + "/{emoji}", self._list_reaction_users)
        r("DELETE", reactions + "/{emoji}", self._clear_reaction)
        r("DELETE", reactions, self._clear_reactions)
        r("GET", "/guilds/{guild_id}", self._get_guild)
        r("GET", "/guilds/{guild_id}/channels", self._get_guild_channels)
        r("GET", "/guilds/{guild_id}/roles", self._get_guild_roles)
        r("GET", "/guilds/{guild_id}/members", self._list_members)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member)

    @staticmethod
    def _error(status: int, code: int, message: str, errors: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
        body: dict[str, Any] = {"message": message, "code": code}
        if errors:
            body["errors"] = errors
        return _json(body, status=status, headers=headers)

    async def _api_handler(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        match = re.match(r"^/api/v\d+(/.*)$", request.path)
        sub = match.group(1) if match else request.path
        method = request.method
        route, params = None, {}
        for candidate in self._routes:
            found = candidate.regex.fullmatch(sub)
            if found and candidate.method == method:
                route, params = candidate, found.groupdict()
                break
        call = RestCall(method, sub, 0, time.time(), dict(request.query))
        self.rest_log.append(call)
        try:
            if match is None or route is None:
                self.unknown_routes.append((method, sub))
                _log.warning("localdiscord: unknown route %s %s", method, request.path)
                call.status = 404
                return self._error(404, 0, "404: Not Found")
            auth = request.headers.get("Authorization")
            if (route.auth == "bot" or (route.auth == "webhook" and auth is not None)) and auth != f"Bot {self.token}":
                call.status = 401
                return self._error(401, 0, "401: Unauthorized")
            fault = self._take_fault(method, sub)
            if fault is not None and not fault.after:
                call.status = fault.status
                return self._fault_response(fault)
            body, files = await self._parse_body(request)
            call.json, call.files = body, [f[1] for f in files]
            response = await route.handler(Call(request, params, body, files))
            if fault is not None:
                response = self._fault_response(fault)
        except DiscordError as exc:
            response = self._error(exc.status, exc.code, exc.message, exc.errors)
        except Exception:
            _log.exception("localdiscord: handler for %s %s failed", method, sub)
            response = self._error(500, 0, "500: Internal Server Error")
        call.status = response.status
        _log.debug("localdiscord %s %s -> %s (%.1f ms)", method, sub, response.status,
                   (time.monotonic() - started) * 1000)
        self._waiter.notify()
        return response

    def _take_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in self._faults:
            if rule.remaining > 0 and rule.method in (method, "*") and rule.pattern.fullmatch(path):
                rule.hits += 1
                return rule
        return None

    def _fault_response(self, rule: FaultRule) -> web.Response:
        if rule.status == 429:
            reset_after = f"{rule.retry_after:.3f}"
            headers = {
                "Retry-After": str(max(1, round(rule.retry_after))),
                "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                "X-RateLimit-Reset-After": reset_after, "X-RateLimit-Bucket": "localdiscord-" + uuid.uuid4().hex[:8],
                "X-RateLimit-Scope": "shared" if not rule.is_global else "global",
                # discord.py treats a 429 without Via as a Cloudflare ban; Discord's API responses carry it.
                "Via": "1.1 google",
            }
            if rule.is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {"message": "You are being rate limited.", "retry_after": rule.retry_after,
                    "global": rule.is_global, "code": 0}
            return _json(body, status=429, headers=headers)
        return self._error(rule.status, 0, f"{rule.status}: injected failure")

    async def _parse_body(self, request: web.Request) -> tuple[Any, list[tuple[int, str, bytes, str | None]]]:
        files: list[tuple[int, str, bytes, str | None]] = []
        if request.content_type.startswith("multipart/"):
            payload: Any = None
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = part.name or ""  # type: ignore[union-attr]
                raw = await part.read()  # type: ignore[union-attr]
                if name == "payload_json":
                    payload = json.loads(raw.decode())
                    continue
                index_match = re.fullmatch(r"files\[(\d+)\]|file(\d*)", name)
                if index_match:
                    index = int(index_match.group(1) or index_match.group(2) or len(files))
                    content_type = part.headers.get("Content-Type")  # type: ignore[union-attr]
                    files.append((index, part.filename or f"file{index}", bytes(raw), content_type))  # type: ignore
            return payload, files
        if not request.can_read_body:
            return None, files
        raw = await request.read()
        if not raw:
            return None, files
        try:
            return json.loads(raw), files
        except ValueError:
            raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None

    async def _serve_attachment(self, request: web.Request) -> web.StreamResponse:
        attachment = self.attachments.get(int(request.match_info["id"])) if request.match_info["id"].isdigit() else None
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(body=attachment.data, content_type=attachment.content_type or "application/octet-stream")

    # ------------------------------------------------------------------ gateway

    async def _gateway_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        conn = gw.GatewayConnection(ws, request, zlib_stream=request.query.get("compress") == "zlib-stream")
        self.gateway_log.append({"query": dict(request.query), "zlib_stream": conn.zlib_stream, "time": time.time()})
        self._connections.add(conn)
        conn.send({"op": gw.HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
        session: gw.GatewaySession | None = None
        try:
            async for msg in ws:
                if msg.type.name not in ("TEXT", "BINARY"):
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await conn.close(4002, b"Error while decoding payload.")
                    break
                op, data = frame.get("op"), frame.get("d")
                if op == gw.HEARTBEAT:
                    conn.send({"op": gw.HEARTBEAT_ACK, "d": None, "s": None, "t": None})
                elif op == gw.IDENTIFY:
                    session = await self._identify(conn, data or {})
                    if session is None:
                        break
                elif op == gw.RESUME:
                    session = self._resume(conn, data or {})
                elif op == gw.REQUEST_MEMBERS and session is not None:
                    self._members_chunk(session, data or {})
                elif op in (gw.PRESENCE, gw.VOICE_STATE):
                    continue
                elif session is None:
                    await conn.close(4003, b"Not authenticated.")
                    break
        finally:
            if session is not None and session.connection is conn:
                session.connection = None
            self._connections.discard(conn)
            await conn.finish()
            self._waiter.notify()
        return ws

    @staticmethod
    def _strip_bot(token: str) -> str:
        return token[4:] if token.startswith("Bot ") else token

    async def _identify(self, conn: gw.GatewayConnection, data: dict[str, Any]) -> gw.GatewaySession | None:
        if self._strip_bot(str(data.get("token", ""))) != self.token:
            await conn.close(4004, b"Authentication failed.")
            return None
        self.identify_count += 1
        session = gw.GatewaySession(secrets.token_hex(16), shard=data.get("shard"), intents=data.get("intents", 0))
        session.connection = conn
        self.sessions[session.session_id] = session
        ready: dict[str, Any] = {
            "v": 10, "user": self.bot_user.payload() | {"verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": session.session_id, "resume_gateway_url": self.gateway_url, "session_type": "normal",
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [],
            "geo_ordered_rtc_regions": [], "user_settings": {},
            "shard": session.shard or [0, 1], "_trace": ["localdiscord"],
        }
        session.dispatch("READY", ready)
        for guild in self.guilds.values():
            session.dispatch("GUILD_CREATE", guild.payload(full=True))
        self._waiter.notify()
        return session

    def _resume(self, conn: gw.GatewayConnection, data: dict[str, Any]) -> gw.GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        seq = data.get("seq")
        if (session is None or self._strip_bot(str(data.get("token", ""))) != self.token
                or not session.can_resume_from(seq)):
            conn.send({"op": gw.INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        if session.connection is not None and session.connection is not conn:
            old = session.connection
            session.connection = None
            self._spawn(old.close(4000))
        session.connection = conn
        session.resumes += 1
        self.resume_count += 1
        session.replay(seq)
        session.dispatch("RESUMED", {"_trace": ["localdiscord"]})
        self._waiter.notify()
        return session

    def _members_chunk(self, session: gw.GatewaySession, data: dict[str, Any]) -> None:
        guild = self.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.id in wanted]
        elif data.get("query"):
            members = [m for m in members if m.name.lower().startswith(str(data["query"]).lower())]
        limit = data.get("limit") or 0
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {"guild_id": str(guild.id), "members": [m.payload() for m in members],
                                 "chunk_index": 0, "chunk_count": 1, "not_found": []}
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    # ------------------------------------------------------------------ REST: misc

    async def _no_content(self, call: Call) -> web.Response:
        return web.Response(status=204)

    async def _empty_list(self, call: Call) -> web.Response:
        return _json([])

    async def _get_gateway(self, call: Call) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, call: Call) -> web.Response:
        return _json({
            "url": self.gateway_url, "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
        })

    async def _get_me(self, call: Call) -> web.Response:
        return _json(self.bot_user.payload() | {"verified": True, "mfa_enabled": False})

    async def _get_my_guilds(self, call: Call) -> web.Response:
        return _json([
            {"id": str(g.id), "name": g.name, "icon": None, "owner": False, "features": [],
             "permissions": str(g.permissions_of(g.members[self.bot_user.id]))}
            for g in self.guilds.values()
        ])

    async def _get_user(self, call: Call) -> web.Response:
        user = self.users.get(_int(call.params["user_id"]))
        if user is None:
            raise unknown("User", 10013)
        return _json(user.payload())

    async def _create_dm(self, call: Call) -> web.Response:
        recipient = self.users.get(_int((call.json or {}).get("recipient_id")))
        if recipient is None:
            raise unknown("User", 10013)
        for channel in self.channels.values():
            if channel.type == 1 and channel.recipients and channel.recipients[0].id == recipient.id:
                return _json(channel.payload())
        channel = Channel(snowflake(), recipient.username, None, type=1, recipients=[recipient])
        self.channels[channel.id] = channel
        return _json(channel.payload())

    async def _get_application(self, call: Call) -> web.Response:
        return _json({
            "id": str(self.application_id), "name": self.bot_user.username, "icon": None,
            "description": "local imagine-bot", "summary": "", "rpc_origins": [], "bot_public": True,
            "bot_require_code_grant": False, "owner": self.users[self.guild.owner_id].payload()
            if hasattr(self, "guild") else self.bot_user.payload(),
            "team": None, "verify_key": "0" * 64, "flags": 0, "bot": self.bot_user.payload(),
            "interactions_endpoint_url": None, "approximate_guild_count": len(self.guilds),
            "redirect_uris": [], "tags": [],
        })

    # ------------------------------------------------------------------ REST: application commands

    def _command_store(self, call: Call) -> tuple[dict[int, dict[str, Any]], int | None]:
        if _int(call.params["app_id"]) != self.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        guild_id = call.params.get("guild_id")
        if guild_id is None:
            return self.global_commands, None
        gid = _int(guild_id)
        if gid not in self.guilds:
            raise DiscordError(403, 50001, "Missing Access")
        return self.guild_commands.setdefault(gid, {}), gid

    def _normalise_command(self, data: dict[str, Any], guild_id: int | None, existing: dict[str, Any] | None
                           ) -> dict[str, Any]:
        if not isinstance(data, dict) or not data.get("name"):
            raise DiscordError(400, 50035, "Invalid Form Body", {"name": {"_errors": [{"code": "BASE_TYPE_REQUIRED",
                                                                                       "message": "required"}]}})
        command = dict(data)
        command.setdefault("type", 1)
        command.setdefault("description", "")
        command.setdefault("options", [])
        command.setdefault("default_member_permissions", None)
        command.setdefault("nsfw", False)
        command["id"] = existing["id"] if existing else str(snowflake())
        command["application_id"] = str(self.application_id)
        command["version"] = str(snowflake())
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        else:
            command.setdefault("contexts", None)
            command.setdefault("integration_types", [0])
        return command

    async def _list_commands(self, call: Call) -> web.Response:
        store, _ = self._command_store(call)
        return _json(list(store.values()))

    async def _put_commands(self, call: Call) -> web.Response:
        store, guild_id = self._command_store(call)
        if not isinstance(call.json, list):
            raise DiscordError(400, 50035, "Invalid Form Body")
        by_key = {(c["name"], c["type"]): c for c in store.values()}
        new: dict[int, dict[str, Any]] = {}
        for data in call.json:
            command = self._normalise_command(data, guild_id, by_key.get((data.get("name"), data.get("type", 1))))
            new[int(command["id"])] = command
        store.clear()
        store.update(new)
        return _json(list(store.values()))

    async def _post_command(self, call: Call) -> web.Response:
        store, guild_id = self._command_store(call)
        data = call.json or {}
        existing = next((c for c in store.values()
                         if c["name"] == data.get("name") and c["type"] == data.get("type", 1)), None)
        command = self._normalise_command(data, guild_id, existing)
        store[int(command["id"])] = command
        return _json(command, status=200 if existing else 201)

    def _find_command(self, call: Call) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
        store, _ = self._command_store(call)
        command = store.get(_int(call.params["command_id"]))
        if command is None:
            raise unknown("application command", 10063)
        return store, command

    async def _get_command(self, call: Call) -> web.Response:
        return _json(self._find_command(call)[1])

    async def _patch_command(self, call: Call) -> web.Response:
        store, command = self._find_command(call)
        _, guild_id = self._command_store(call)
        updated = self._normalise_command({**command, **(call.json or {})}, guild_id, command)
        store[int(updated["id"])] = updated
        return _json(updated)

    async def _delete_command(self, call: Call) -> web.Response:
        store, command = self._find_command(call)
        del store[int(command["id"])]
        return web.Response(status=204)

    # ------------------------------------------------------------------ messages: building and editing

    def _attachment_url(self, attachment: Attachment) -> str:
        return f"{self.base_url}/attachments/{attachment.id}/{quote(attachment.filename)}"

    def store_attachment(self, filename: str, data: bytes, content_type: str | None = None,
                         description: str | None = None) -> Attachment:
        """Keep bytes in memory and give them a local URL (used for uploads and member attachments)."""
        if content_type is None or content_type == "application/octet-stream":
            content_type = _guess_content_type(filename, data) or content_type
        attachment = Attachment(snowflake(), filename, data, content_type, description,
                                spoiler=filename.startswith("SPOILER_"))
        attachment.url = self._attachment_url(attachment)
        self.attachments[attachment.id] = attachment
        return attachment

    def _attachments(self, payload: dict[str, Any], files: list[tuple[int, str, bytes, str | None]],
                     existing: list[Attachment] | None) -> list[Attachment]:
        described = {str(a.get("id")): a for a in payload.get("attachments") or [] if isinstance(a, dict)}
        kept: list[Attachment] = []
        if existing:
            if "attachments" in payload:
                keep_ids = set(described)
                kept = [a for a in existing if str(a.id) in keep_ids]
            else:
                kept = list(existing)
        total = sum(len(f[2]) for f in files)
        if total > self.attachment_size_limit:
            raise DiscordError(413, 40005, "Request entity too large")
        new = []
        for index, filename, data, content_type in sorted(files, key=lambda f: f[0]):
            meta = described.get(str(index), {})
            new.append(self.store_attachment(meta.get("filename") or filename, data, content_type,
                                             meta.get("description")))
        if len(kept) + len(new) > 10:
            raise DiscordError(400, 50035, "Invalid Form Body", {"attachments": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 10 or fewer in length."}]}})
        return kept + new

    @staticmethod
    def _validate_content(payload: dict[str, Any]) -> None:
        content = payload.get("content")
        if content is not None and len(str(content)) > 2000:
            raise DiscordError(400, 50035, "Invalid Form Body", {"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}})
        embeds = payload.get("embeds") or []
        if len(embeds) > 10:
            raise DiscordError(400, 50035, "Invalid Form Body", {"embeds": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 10 or fewer in length."}]}})
        for i, embed in enumerate(embeds):
            size = sum(len(str(embed.get(k) or "")) for k in ("title", "description"))
            size += sum(len(str(f.get("name", ""))) + len(str(f.get("value", ""))) for f in embed.get("fields") or [])
            if size > 6000 or len(str(embed.get("description") or "")) > 4096:
                raise DiscordError(400, 50035, "Invalid Form Body", {"embeds": {str(i): {"_errors": [
                    {"code": "BASE_TYPE_MAX_LENGTH", "message": "Embed size exceeds maximum size of 6000"}]}}})

    def _new_message(self, channel: Channel, payload: dict[str, Any], files: list[tuple[int, str, bytes, str | None]],
                     *, flags: int = 0, interaction: Interaction | None = None, webhook: bool = False,
                     allow_empty: bool = False) -> Message:
        payload = payload or {}
        self._validate_content(payload)
        attachments = self._attachments(payload, files, None)
        message = Message(
            id=snowflake(), channel_id=channel.id, guild_id=channel.guild_id, author=self.bot_user,
            content=str(payload.get("content") or ""), embeds=list(payload.get("embeds") or []),
            attachments=attachments, components=list(payload.get("components") or []),
            flags=flags | (int(payload.get("flags") or 0) & ~LOADING), tts=bool(payload.get("tts")),
            member=None if webhook else self._bot_member(channel.guild_id),
            webhook_id=self.application_id if webhook else None,
            application_id=self.application_id if interaction is not None else None,
        )
        if not webhook:
            message.flags &= ~EPHEMERAL  # only interaction responses may be ephemeral
        if not (allow_empty or message.content or message.embeds or message.attachments or message.components
                or payload.get("poll") or payload.get("sticker_ids")):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        reference = payload.get("message_reference")
        if isinstance(reference, dict) and reference.get("message_id"):
            message.message_reference = {"message_id": str(reference["message_id"]), "channel_id": str(channel.id),
                                         "type": 0}
            if channel.guild_id is not None:
                message.message_reference["guild_id"] = str(channel.guild_id)
        if interaction is not None:
            message.interaction_id = interaction.id
            message.interaction_metadata = {
                "id": str(interaction.id), "type": interaction.type, "user": interaction.user.payload(),
                "authorizing_integration_owners": {"0": str(channel.guild_id)} if channel.guild_id else {},
            }
            if interaction.type == 2:
                message.interaction_metadata["name"] = interaction.payload["data"].get("name")
            if message.ephemeral:
                message.visible_to = interaction.user.id
        self.messages[message.id] = message
        return message

    def _apply_edit(self, message: Message, payload: dict[str, Any],
                    files: list[tuple[int, str, bytes, str | None]]) -> None:
        payload = payload or {}
        self._validate_content(payload)
        if "content" in payload:
            message.content = str(payload["content"] or "")
        if "embeds" in payload:
            message.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            message.components = list(payload["components"] or [])
        if "attachments" in payload or files:
            message.attachments = self._attachments(payload, files, message.attachments)
        if payload.get("flags") is not None:
            # Only SUPPRESS_EMBEDS (4) and IS_COMPONENTS_V2 (1 << 15) may change; ephemeral stays as it was.
            changeable = 4 | (1 << 15)
            message.flags = (message.flags & ~changeable) | (int(payload["flags"]) & changeable)
        message.flags &= ~LOADING
        message.edited_timestamp = iso_now()
        message.edits += 1

    def _channel(self, call: Call) -> Channel:
        channel = self.channels.get(_int(call.params["channel_id"]))
        if channel is None:
            raise unknown("Channel", 10003)
        return channel

    def _message(self, call: Call, channel: Channel | None = None) -> Message:
        message = self.messages.get(_int(call.params["message_id"]))
        if message is None or message.deleted or (channel is not None and message.channel_id != channel.id):
            raise unknown("Message", 10008)
        return message

    def _message_response(self, message: Message) -> web.Response:
        return _json(message.payload(self_id=self.bot_user.id))

    # ------------------------------------------------------------------ REST: channels and messages

    async def _get_channel(self, call: Call) -> web.Response:
        return _json(self._channel(call).payload())

    async def _list_messages(self, call: Call) -> web.Response:
        channel = self._channel(call)
        limit = max(1, min(100, int(call.query.get("limit", 50))))
        items = [m for m in self.messages.values() if m.channel_id == channel.id and not m.deleted and not m.ephemeral]
        before, after, around = (call.query.get(k) for k in ("before", "after", "around"))
        if before:
            items = [m for m in items if m.id < int(before)]
        if after:
            items = [m for m in items if m.id > int(after)]
            items = items[:limit]
        if around:
            pivot = int(around)
            items.sort(key=lambda m: abs(m.id - pivot))
            items = sorted(items[:limit], key=lambda m: m.id)
        items = sorted(items, key=lambda m: m.id, reverse=True)[:limit]
        return _json([m.payload(self_id=self.bot_user.id) for m in items])

    async def _create_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        message = self._new_message(channel, call.json or {}, call.files)
        self._publish_create(message)
        return self._message_response(message)

    async def _get_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        message = self._message(call, channel)
        if message.ephemeral:
            raise unknown("Message", 10008)
        return self._message_response(message)

    async def _edit_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        message = self._message(call, channel)
        if message.author.id != self.bot_user.id or message.ephemeral:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        return self._edited(message, call)

    async def _delete_message(self, call: Call) -> web.Response:
        return self._deleted(self._message(call, self._channel(call)))

    def _edited(self, message: Message, call: Call) -> web.Response:
        """Apply a PATCH (channel or webhook route alike), tell subscribers, answer with the new message."""
        self._apply_edit(message, call.json or {}, call.files)
        self._publish_update(message)
        return self._message_response(message)

    def _deleted(self, message: Message) -> web.Response:
        message.deleted = True
        self._publish_delete(message)
        return web.Response(status=204)

    def _reaction_event(self, message: Message, emoji: str, user: User, added: bool) -> None:
        data: dict[str, Any] = {
            "user_id": str(user.id), "channel_id": str(message.channel_id), "message_id": str(message.id),
            "emoji": emoji_payload(emoji), "burst": False, "type": 0,
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if added:
            data["message_author_id"] = str(message.author.id)
            data["burst_colors"] = []
            member = self.guilds[message.guild_id].members.get(user.id) if message.guild_id else None
            if member is not None:
                data["member"] = member.payload()
        self._dispatch_all("MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE", data)
        self._emit("reaction_add" if added else "reaction_remove",
                   {"message_id": str(message.id), "channel_id": str(message.channel_id), "emoji": emoji,
                    "user_id": str(user.id), "count": len(message.reactions.get(emoji, []))})

    def _set_reaction(self, message: Message, emoji: str, user: User, present: bool) -> bool:
        users = message.reactions.setdefault(emoji, [])
        changed = (user.id not in users) if present else (user.id in users)
        if present and changed:
            users.append(user.id)
        elif not present and changed:
            users.remove(user.id)
        if not users:
            message.reactions.pop(emoji, None)
        if changed:
            self._reaction_event(message, emoji, user, present)
        return changed

    async def _add_own_reaction(self, call: Call) -> web.Response:
        message = self._message(call, self._channel(call))
        self._set_reaction(message, call.params["emoji"], self.bot_user, True)
        return web.Response(status=204)

    async def _remove_own_reaction(self, call: Call) -> web.Response:
        message = self._message(call, self._channel(call))
        self._set_reaction(message, call.params["emoji"], self.bot_user, False)
        return web.Response(status=204)

    async def _remove_user_reaction(self, call: Call) -> web.Response:
        message = self._message(call, self._channel(call))
        user = self.users.get(_int(call.params["user_id"]))
        if user is None:
            raise unknown("User", 10013)
        self._set_reaction(message, call.params["emoji"], user, False)
        return web.Response(status=204)

    async def _list_reaction_users(self, call: Call) -> web.Response:
        message = self._message(call, self._channel(call))
        ids = message.reactions.get(call.params["emoji"], [])
        return _json([self.users[i].payload() for i in ids if i in self.users])

    async def _clear_reaction(self, call: Call) -> web.Response:
        message = self._message(call, self._channel(call))
        for user_id in list(message.reactions.get(call.params["emoji"], [])):
            self._set_reaction(message, call.params["emoji"], self.users[user_id], False)
        return web.Response(status=204)

    async def _clear_reactions(self, call: Call) -> web.Response:
        message = self._message(call, self._channel(call))
        for emoji, users in list(message.reactions.items()):
            for user_id in list(users):
                self._set_reaction(message, emoji, self.users[user_id], False)
        return web.Response(status=204)

    # ------------------------------------------------------------------ REST: guilds

    def _guild(self, call: Call) -> Guild:
        guild = self.guilds.get(_int(call.params["guild_id"]))
        if guild is None:
            raise unknown("Guild", 10004)
        return guild

    async def _get_guild(self, call: Call) -> web.Response:
        return _json(self._guild(call).payload())

    async def _get_guild_channels(self, call: Call) -> web.Response:
        return _json([c.payload() for c in self._guild(call).channels])

    async def _get_guild_roles(self, call: Call) -> web.Response:
        return _json([r.payload() for r in self._guild(call).roles])

    async def _list_members(self, call: Call) -> web.Response:
        guild = self._guild(call)
        limit = int(call.query.get("limit", 1))
        after = int(call.query.get("after", 0))
        members = sorted((m for m in guild.members.values() if m.id > after), key=lambda m: m.id)[:limit]
        return _json([m.payload() for m in members])

    async def _get_member(self, call: Call) -> web.Response:
        member = self._guild(call).members.get(_int(call.params["user_id"]))
        if member is None:
            raise unknown("Member", 10007)
        return _json(member.payload())

    # ------------------------------------------------------------------ REST: interactions and webhooks

    async def _interaction_callback(self, call: Call) -> web.Response:
        interaction = self.interactions.get(_int(call.params["interaction_id"]))
        if interaction is None or interaction.token != call.params["token"]:
            raise unknown("interaction", 10062)
        if interaction.acknowledged:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        now = time.monotonic()
        if now - interaction.created_monotonic > self.ack_deadline_seconds:
            interaction.late_callback = True
            self._waiter.notify()
            raise unknown("interaction", 10062)
        body = call.json or {}
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        channel = interaction.channel
        resource: dict[str, Any] = {"type": kind}
        message: Message | None = None
        if kind == 4:
            message = self._new_message(channel, data, call.files, interaction=interaction, webhook=True)
            self._register_original(interaction, message)
            self._publish_create(message)
        elif kind == 5:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            message = self._new_message(channel, {}, [], flags=flags, interaction=interaction, webhook=True,
                                        allow_empty=True)
            self._register_original(interaction, message)
            self._publish_create(message)
        elif kind in (6, 7):
            if interaction.component_message_id is None:
                raise DiscordError(400, 40060 if kind == 6 else 50035,
                                   "Interaction callback type only valid for component interactions")
            message = self.messages[interaction.component_message_id]
            self._register_original(interaction, message)
            if kind == 7:
                self._apply_edit(message, data, call.files)
                self._publish_update(message)
        elif kind == 8:
            interaction.autocomplete_choices = list(data.get("choices") or [])
        elif kind == 9:
            interaction.modal = data
        elif kind != 1:
            raise DiscordError(400, 50035, "Invalid Form Body", {"type": {"_errors": [
                {"code": "BASE_TYPE_CHOICES", "message": f"Value must be one of (1, 4, 5, 6, 7, 8, 9), got {kind}"}]}})
        interaction.acked_monotonic = now
        interaction.response_type = kind
        interaction.response_data = data
        self._emit("interaction_response", {
            "interaction_id": str(interaction.id), "response_type": kind, "data": _jsonable(data),
            "ack_latency": interaction.ack_latency,
            "message": message.to_event() if message is not None else None,
        })
        if call.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        if message is not None:
            resource["message"] = message.payload(self_id=self.bot_user.id)
        return _json({
            "interaction": {
                "id": str(interaction.id), "type": interaction.type,
                "response_message_id": str(message.id) if message is not None else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message is not None and message.ephemeral),
            },
            "resource": resource,
        })

    @staticmethod
    def _register_original(interaction: Interaction, message: Message) -> None:
        interaction.original_message_id = message.id
        if message.id not in interaction.message_ids:
            interaction.message_ids.insert(0, message.id)

    def _webhook_interaction(self, call: Call) -> Interaction:
        """The interaction behind ``/webhooks/{app}/{token}``; enforces the token's 15-minute lifetime."""
        interaction = self._interactions_by_token.get(call.params["token"])
        if interaction is None or _int(call.params["app_id"]) != self.application_id:
            raise unknown("Webhook", 10015)
        if time.monotonic() - interaction.created_monotonic > self.token_ttl_seconds:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        if not interaction.acknowledged:
            raise unknown("Webhook", 10015)
        return interaction

    def _webhook_target(self, call: Call, interaction: Interaction) -> Message:
        mid = call.request.path.rsplit("/", 1)[-1]
        if mid == "@original":
            message = interaction.original
            if message is None:
                raise unknown("Message", 10008)
            return message
        message = self.messages.get(_int(mid))
        if message is None or message.deleted or message.id not in interaction.message_ids:
            raise unknown("Message", 10008)
        return message

    async def _followup_create(self, call: Call) -> web.Response:
        interaction = self._webhook_interaction(call)
        payload = call.json or {}
        original = interaction.original
        if original is not None and original.loading and not original.deleted:
            # Discord: the first followup after a deferred (type 5) response replaces the "thinking" message,
            # keeping the defer's ephemerality.
            self._apply_edit(original, {"attachments": [], **payload}, call.files)
            self._publish_update(original)
            message = original
        else:
            message = self._new_message(interaction.channel, payload, call.files, interaction=interaction,
                                        webhook=True)
            interaction.message_ids.append(message.id)
            self._publish_create(message)
        if call.query.get("wait") in ("0", "false", "False"):
            return web.Response(status=204)
        return self._message_response(message)

    async def _webhook_message_get(self, call: Call) -> web.Response:
        interaction = self._webhook_interaction(call)
        return self._message_response(self._webhook_target(call, interaction))

    async def _webhook_message_edit(self, call: Call) -> web.Response:
        return self._edited(self._webhook_target(call, self._webhook_interaction(call)), call)

    async def _webhook_message_delete(self, call: Call) -> web.Response:
        return self._deleted(self._webhook_target(call, self._webhook_interaction(call)))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with exactly ``Content-Type: application/json``: discord.py compares the header verbatim and treats
    ``application/json; charset=utf-8`` (aiohttp's default) as plain text."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return web.Response(body=body, status=status, headers={**(headers or {}), "Content-Type": "application/json"})


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _guess_content_type(filename: str, data: bytes) -> str | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if filename.endswith((".txt", ".log")):
        return "text/plain; charset=utf-8"
    if filename.endswith(".json"):
        return "application/json"
    return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
