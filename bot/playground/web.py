"""The playground's web server: the page, a small JSON API that acts as guild members, and a live WebSocket.

It talks to the local Discord-compatible server in-process (same event loop) through its harness API
(``send_command``, ``react``, ``press_button``, ``subscribe``), so what the page does is exactly what a
member's Discord client would do, and the bot cannot tell the difference.

API (all JSON; ``member`` is a username or user id, ``channel`` a channel name or id):

* ``GET /api/state`` -> guild, channels, members, synced commands, messages, model info.
* ``POST /api/command`` ``{member, channel, text}`` (``/imagine prompt:... seed:...``) or
  ``{member, channel, name, options}`` -> ``{interaction_id, name, options}``; 400 ``{error}`` when Discord's
  client would refuse it (unknown command/option, out of bounds). An attachment option is
  ``{"filename": ..., "data": <base64>}`` (the page's file picker).
* ``POST /api/react`` ``{member, message_id, emoji, remove?}``; ``POST /api/button``
  ``{member, message_id, custom_id}``; ``POST /api/select`` ``{member, message_id, custom_id, values}``;
  ``POST /api/message`` ``{member, channel, content}``.
* ``GET /ws``: first ``{"type": "state", ...}`` (as ``/api/state``), then every server event
  (``message_create``/``message_update``/``message_delete``/``reaction_add``/``reaction_remove``/
  ``interaction_create``/``interaction_response``) with the message's current state under ``message``.
* ``GET /attachments/{id}/{filename}``: the local server's attachments, same-origin for the page.

Whoever can use the page acts as any member, the server's admin included, so the page guards itself on every
address it listens on (``playground.host: 0.0.0.0`` too): the Host header must name this machine (the configured
host, a loopback name, the machine's name, or the address the request arrived on), which defeats DNS rebinding,
and a request that acts must come from the page's own origin. Listening beyond loopback is warned about loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

from bot.localdiscord.models import ADMINISTRATOR, CHANNEL, ROLE, USER, Channel, Member, Message
from bot.playground.commands import CommandTextError, coerce_options, leaf_options, parse_command_text

if TYPE_CHECKING:
    from bot.localdiscord import LocalDiscordServer

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
NO_CACHE = {"Cache-Control": "no-store"}
CLIENT_QUEUE_SIZE = 2000
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the page on this machine (a wildcard or a LAN address does not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def host_name(header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8765`` -> ``::1``), lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header[1:]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def beyond_loopback_warning(host: str, port: int) -> str:
    return (f"The playground page listens on {host or '*'}:{port}, beyond this machine: anyone who can reach "
            "that address can act as every member of the playground, its admin included. Set playground.host to "
            "127.0.0.1 unless that is what you want.")


class ApiError(Exception):
    """A request the page should explain to the person (HTTP 400 with ``{"error": message}``)."""


class PlaygroundWeb:
    """The aiohttp app serving the page for one :class:`LocalDiscordServer`.

    ``info`` is a callable returning page-level facts (model name, fallback banner, defaults), read on each
    state request so it reflects the running bot.
    """

    def __init__(self, server: LocalDiscordServer, *, info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.server = server
        self.info = info or dict
        self.host = "127.0.0.1"
        self.port = 0
        self._clients: weakref.WeakSet[_Client] = weakref.WeakSet()
        self._runner: web.AppRunner | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._machine_names: frozenset[str] = frozenset()
        self.app = self._build_app()

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the page (a wildcard address is reached through 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    # ------------------------------------------------------------------ lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
        app.router.add_get("/api/state", self._state)
        app.router.add_post("/api/command", self._command)
        app.router.add_post("/api/react", self._react)
        app.router.add_post("/api/button", self._button)
        app.router.add_post("/api/select", self._select)
        app.router.add_post("/api/message", self._message)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/attachments/{id}/{filename}", self._attachment)
        app.middlewares.append(self._same_origin_only)
        app.middlewares.append(_errors_as_json)
        return app

    @web.middleware
    async def _same_origin_only(self, request: web.Request,
                                handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """Only this page may act as members: any web site the person visits could otherwise POST to
        127.0.0.1 or read the WebSocket (cross-site requests carry a foreign ``Origin``), or reach it through DNS
        rebinding (a foreign ``Host``). Tools without an ``Origin`` (curl, tests) are fine. Checked on every
        address the page listens on, a wildcard one included."""
        host = request.headers.get("Host", "")
        if host_name(host) not in self._local_names(request):
            return web.json_response({"error": f"unexpected Host {host!r}; open the page at {self.url}"}, status=403)
        origin = request.headers.get("Origin")
        acting = request.method != "GET" or request.path == "/ws"
        if acting and origin is not None and origin.split("://", 1)[-1] != host:
            return web.json_response({"error": "cross-origin requests are refused"}, status=403)
        return await handler(request)

    def _local_names(self, request: web.Request) -> set[str]:
        """Names a browser may use for this page: loopback, the configured host, this machine's name and the
        address this request arrived on (an IP literal a browser was pointed at; a rebound DNS name is not)."""
        names = set(LOOPBACK_NAMES) | set(self._machine_names)
        if self.host not in WILDCARD_HOSTS:
            names.add(self.host.lower())
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if sockname:
            names.add(str(sockname[0]).lower())
        return names

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port, read back into :attr:`port`)."""
        self._unsubscribe = self.server.subscribe(self._on_event)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.host, self.port = host, sockets[0].getsockname()[1] if sockets else port
        if not is_loopback(host):
            self._machine_names = await asyncio.to_thread(_machine_names)
            log.warning(beyond_loopback_warning(host, self.port))

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for client in list(self._clients):
            client.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ views of the server's state

    def message_view(self, message: Message) -> dict[str, Any]:
        """The message as the page needs it: the event form, same-origin attachment URLs, and who reacted
        (Discord's payload only says whether the *bot* reacted)."""
        data = message.to_event()
        for attachment in data.get("attachments", []):
            local = f"/attachments/{attachment['id']}/{quote(attachment['filename'])}"
            attachment["url"] = attachment["proxy_url"] = local
        data["reaction_users"] = {emoji: [str(u) for u in users] for emoji, users in message.reactions.items()
                                  if users}
        data["deleted"] = message.deleted
        author = message.member.nick if message.member is not None else None
        data["author_display"] = author or message.author.global_name or message.author.username
        return data

    def state(self) -> dict[str, Any]:
        """Everything a page that (re)connects needs to draw itself."""
        server = self.server
        guild = server.guild
        roles = {r.id: r for r in guild.roles}
        members = []
        for member in guild.members.values():
            role_names = [roles[r].name for r in member.role_ids if r in roles and not roles[r].managed]
            members.append({
                "id": str(member.id), "username": member.name,
                "display_name": member.nick or member.user.global_name or member.name,
                "bot": member.user.bot, "owner": member.id == guild.owner_id, "roles": role_names,
                "admin": any(roles[r].permissions & ADMINISTRATOR for r in member.role_ids if r in roles),
            })
        commands = [c for c in self.commands() if c.get("type", 1) == 1]
        return {
            "type": "state",
            "bot": server.bot_user.payload(),
            "guild": {"id": str(guild.id), "name": guild.name},
            "channels": [{"id": str(c.id), "name": c.name, "nsfw": c.nsfw, "topic": c.topic}
                         for c in guild.channels],
            "members": members,
            "commands": sorted(commands, key=lambda c: c["name"]),
            "messages": [self.message_view(m) for m in server.messages.values() if not m.deleted],
            "event_index": len(server.events),
            "info": self.info(),
        }

    def commands(self) -> list[dict[str, Any]]:
        """Every command the bot synced (global and per guild), as Discord stores them."""
        server = self.server
        return [*server.global_commands.values(), *(c for store in server.guild_commands.values()
                                                    for c in store.values())]

    def event_view(self, event: dict[str, Any]) -> dict[str, Any]:
        """An event with the message's *current* state (so reactions and edits always land consistently)."""
        out = dict(event)
        message_id = None
        if isinstance(event.get("message"), dict):
            message_id = event["message"].get("id")
        elif event.get("type") in ("reaction_add", "reaction_remove", "message_delete"):
            message_id = event.get("message_id") or event.get("id")
        if message_id is not None:
            message = self.server.messages.get(int(message_id))
            if message is not None:
                out["message"] = self.message_view(message)
        return out

    def push_state(self) -> None:
        """Send every open page a fresh full state (e.g. once the bot is ready and its commands are synced)."""
        text = json.dumps(self.state(), default=str)
        for client in list(self._clients):
            client.push(text)

    def _on_event(self, event: dict[str, Any]) -> None:
        """Subscriber callback (sync, on the loop): serialise once now, fan out to every page."""
        text = json.dumps(self.event_view(event), default=str)
        for client in list(self._clients):
            client.push(text)

    # ------------------------------------------------------------------ lookups

    def member(self, key: Any) -> Member:
        if key is None or key == "":
            raise ApiError("say which member acts: member = a username such as 'alice', or a user id")
        try:
            return self.server.get_member(str(key))
        except KeyError:
            names = sorted(m.name for m in self.server.guild.members.values() if not m.user.bot)
            raise ApiError(f"no member {key!r}; members: {', '.join(names)}") from None

    def channel(self, key: Any) -> Channel:
        if key is None or key == "":
            raise ApiError("say where: channel = a channel name such as 'general', or a channel id")
        key = str(key).lstrip("#")
        if key.isdigit() and int(key) in self.server.channels:
            return self.server.channels[int(key)]
        try:
            return self.server.channel_by_name(key)
        except KeyError as exc:
            raise ApiError(str(exc.args[0])) from None

    def message(self, key: Any) -> Message:
        message = self.server.messages.get(int(key)) if str(key).isdigit() else None
        if message is None or message.deleted:
            raise ApiError(f"no message {key!r} (deleted?)")
        return message

    def _resolve(self, kind: int, text: str) -> Any:
        """``#art``, ``@bob`` or a role name (what a person types) -> the id Discord would send."""
        text = text.strip()
        if text.isdigit():
            return int(text)
        if kind == CHANNEL:
            return self.channel(text).id
        if kind == ROLE:
            role = next((r for r in self.server.guild.roles if r.name.lower() == text.lstrip("@").lower()), None)
            if role is None:
                raise ApiError(f"no role {text!r}")
            return role.id
        if kind == USER or text.startswith("@"):
            return self.member(text.lstrip("@")).id
        return text

    # ------------------------------------------------------------------ handlers

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state(), dumps=_dumps, headers=NO_CACHE)

    async def _command(self, request: web.Request) -> web.Response:
        body = await _body(request)
        member = self.member(body.get("member"))
        channel = self.channel(body.get("channel"))
        commands = [c for c in self.commands() if c.get("guild_id") in (None, str(channel.guild_id))]
        try:
            if body.get("text"):
                name, options = parse_command_text(str(body["text"]), commands, self._resolve)
            else:
                name = str(body.get("name") or "").strip().lstrip("/")
                if not name:
                    raise ApiError("give text (/imagine prompt:...) or a command name and options")
                raw = body.get("options") or {}
                if not isinstance(raw, dict):
                    raise ApiError("options must be a JSON object")
                parts = name.split()
                definition = self.server.find_command(parts[0], channel.guild_id)
                options = coerce_options(raw, leaf_options(definition, parts[1:]), self._resolve)
            interaction = await self.server.send_command(member, channel, name, options)
        except (CommandTextError, LookupError, ValueError) as exc:
            raise ApiError(str(exc)) from None
        shown = {key: {"filename": value[0], "size": len(value[1])} if isinstance(value, tuple) else value
                 for key, value in options.items()}  # an attachment's bytes are not echoed back
        return web.json_response({"interaction_id": str(interaction.id), "name": name, "options": shown},
                                 dumps=_dumps)

    async def _react(self, request: web.Request) -> web.Response:
        body = await _body(request)
        member, message = self.member(body.get("member")), self.message(body.get("message_id"))
        emoji = str(body.get("emoji") or "").strip()
        if not emoji:
            raise ApiError("emoji is required")
        if body.get("remove"):
            await self.server.unreact(member, message, emoji)
        else:
            await self.server.react(member, message, emoji)
        return web.json_response({"ok": True, "message": self.message_view(message)}, dumps=_dumps)

    async def _button(self, request: web.Request) -> web.Response:
        body = await _body(request)
        member, message = self.member(body.get("member")), self.message(body.get("message_id"))
        try:
            interaction = await self.server.press_button(member, message, str(body.get("custom_id") or ""))
        except LookupError as exc:
            raise ApiError(str(exc)) from None
        return web.json_response({"interaction_id": str(interaction.id)})

    async def _select(self, request: web.Request) -> web.Response:
        body = await _body(request)
        member, message = self.member(body.get("member")), self.message(body.get("message_id"))
        values = body.get("values") or []
        if not isinstance(values, list):
            raise ApiError("values must be a list")
        try:
            interaction = await self.server.select(member, message, str(body.get("custom_id") or ""),
                                                   [str(v) for v in values])
        except LookupError as exc:
            raise ApiError(str(exc)) from None
        return web.json_response({"interaction_id": str(interaction.id)})

    async def _message(self, request: web.Request) -> web.Response:
        body = await _body(request)
        member, channel = self.member(body.get("member")), self.channel(body.get("channel"))
        content = str(body.get("content") or "").strip()
        if not content:
            raise ApiError("an empty message cannot be sent")
        if len(content) > 2000:
            raise ApiError("a message is at most 2000 characters")
        message = await self.server.send_message(member, channel, content)
        return web.json_response({"message_id": str(message.id)})

    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["id"]
        attachment = self.server.attachments.get(int(key)) if key.isdigit() else None
        if attachment is None or attachment.filename != request.match_info["filename"]:
            raise web.HTTPNotFound(text="no such attachment")
        # Attachments never change once stored, so the browser may keep them.
        return web.Response(body=attachment.data, content_type=(attachment.content_type or
                                                                "application/octet-stream").split(";")[0],
                            headers={"Cache-Control": "max-age=3600"})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        client = _Client()
        # No await between registering and taking the state: no event can fall in between.
        self._clients.add(client)
        client.push(json.dumps(self.state(), default=str))
        sender = asyncio.create_task(client.pump(ws), name="playground-ws-sender")
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data == "ping":
                    await ws.send_str('{"type":"pong"}')
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            client.close()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self._clients.discard(client)
        return ws


class _Client:
    """One open page: a bounded queue of serialised events, drained by :meth:`pump` into its WebSocket."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE_SIZE)
        self.closed = False

    def push(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:  # a page that stopped reading: drop it rather than grow without bound
            log.warning("a playground page fell behind; closing its connection")
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)

    async def pump(self, ws: web.WebSocketResponse) -> None:
        while True:
            text = await self.queue.get()
            if text is None:
                await ws.close()
                return
            await ws.send_str(text)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Explain refusals as ``{"error": ...}`` (the page shows them); log anything unexpected."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("playground request %s %s failed", request.method, request.path)
        return web.json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, status=500)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ApiError("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    return body


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _machine_names() -> frozenset[str]:
    """This machine's host name and fully qualified name (a LAN visitor may open http://<name>:<port>/)."""
    names = {socket.gethostname(), socket.getfqdn()}
    return frozenset(name.lower() for name in names if name)
