"""Gateway v10: the websocket endpoint, IDENTIFY/RESUME, sessions with a replay buffer, and dispatch routing.

Routing follows Discord (``rules/gateway.py``): a guild's events reach only the shard that owns the guild,
DMs only shard 0, and a session gets only the events its intents ask for; without MESSAGE_CONTENT, messages
arrive without content, embeds, attachments and components (except the bot's own, DMs and mentions of it);
without GUILD_PRESENCES, GUILD_CREATE lists only the bot among the members.

discord.py parses TEXT frames as plain JSON even when it asked for ``compress=zlib-stream``, but the server
honours the query anyway (one zlib stream per connection, each frame ending in a Z_SYNC_FLUSH) so the
client's real decompression path is exercised. Frames go through one writer task per connection so the
compressed stream stays in order even when dispatches come from many request handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from collections import deque
from typing import Any

from aiohttp import web

from bot.localdiscord.events import EventHub
from bot.localdiscord.models import Guild, Refusal
from bot.localdiscord.rules.gateway import (
    CONTENT_FIELDS,
    GUILD_PRESENCES,
    MESSAGE_CONTENT,
    MESSAGE_EVENTS,
    identify_refusal,
    needed_intent,
    shard_of,
)
from bot.localdiscord.settings import ServerSettings
from bot.localdiscord.world import World

_log = logging.getLogger(__name__)

# Opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE, RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, \
    HEARTBEAT_ACK = 0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11

REPLAY_BUFFER = 5000


class GatewayConnection:
    """One websocket; frames are queued and written in order by a single task."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, *, zlib_stream: bool) -> None:
        self.ws = ws
        self.request = request
        self.zlib_stream = zlib_stream
        self._compressor = zlib.compressobj() if zlib_stream else None
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop())
        self.closed = False

    def send(self, frame: dict[str, Any]) -> None:
        if not self.closed:
            self._queue.put_nowait(frame)

    async def _write_loop(self) -> None:
        while True:
            frame = await self._queue.get()
            if frame is None or self.ws.closed:
                return
            text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
            try:
                if self._compressor is not None:
                    data = self._compressor.compress(text.encode()) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:
                _log.debug("gateway write failed: %s", exc)
                return

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        """Flush what is queued, then close with ``code``."""
        self.send_nowait_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._writer), 1.0)
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, like a network failure (client sees 1006)."""
        self.closed = True
        self._writer.cancel()
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def send_nowait_stop(self) -> None:
        self._queue.put_nowait(None)

    async def finish(self) -> None:
        self.closed = True
        self._writer.cancel()
        with contextlib.suppress(BaseException):
            await self._writer


class GatewaySession:
    """An identified session: survives disconnects so the client can RESUME and get missed dispatches."""

    def __init__(self, session_id: str, *, shard: list[int] | None, intents: int) -> None:
        self.session_id = session_id
        self.shard = shard
        self.intents = intents
        self.seq = 0
        self.buffer: deque[dict[str, Any]] = deque(maxlen=REPLAY_BUFFER)
        self.connection: GatewayConnection | None = None
        self.invalid = False
        self.resumes = 0

    @property
    def shard_id(self) -> int:
        return self.shard[0] if self.shard else 0

    @property
    def num_shards(self) -> int:
        return self.shard[1] if self.shard else 1

    def owns(self, guild_id: int | None) -> bool:
        """Whether this session's shard gets events of ``guild_id`` (None: DMs, shard 0)."""
        return shard_of(guild_id, self.num_shards) == self.shard_id

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
        self.buffer.append(frame)
        if self.connection is not None:
            self.connection.send(frame)

    def can_resume_from(self, seq: int | None) -> bool:
        if self.invalid:
            return False
        if seq is None or seq >= self.seq:
            return True
        return bool(self.buffer) and self.buffer[0]["s"] <= seq + 1

    def replay(self, seq: int | None) -> None:
        assert self.connection is not None
        for frame in self.buffer:
            if seq is None or frame["s"] > seq:
                self.connection.send(frame)


class Gateway:
    """The gateway endpoint and every session the bot identified; routes the world's dispatches to them.

    Fault injection on the gateway (:meth:`drop`, :meth:`invalidate_sessions`, :meth:`request_reconnect`)
    lives here too, since it acts on the sessions.
    """

    def __init__(self, settings: ServerSettings, world: World, hub: EventHub, refusals: list[Refusal]) -> None:
        self.settings = settings
        self.world = world
        self.hub = hub
        self.refusals = refusals
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: set[GatewayConnection] = set()
        self.identify_count = 0
        self.resume_count = 0
        self.log: list[dict[str, Any]] = []  # one entry per websocket: query, compression, time
        hub.listen(self.dispatch)

    def dispatch(self, event: str, data: dict[str, Any], guild_id: int | None) -> None:
        """Send ``event`` to every session whose shard owns ``guild_id`` and whose intents want it."""
        need = needed_intent(event, in_guild=guild_id is not None)
        for session in self.sessions.values():
            if session.invalid or not session.owns(guild_id) or (need and not session.intents & need):
                continue
            session.dispatch(event, self._as_seen_by(session, event, data, guild_id))

    def _as_seen_by(self, session: GatewaySession, event: str, data: dict[str, Any], guild_id: int | None
                    ) -> dict[str, Any]:
        """``data`` with what the session's intents do not entitle it to left out."""
        if event in MESSAGE_EVENTS and not session.intents & MESSAGE_CONTENT and guild_id is not None:
            bot_id = str(self.world.bot_user.id)
            mentioned = any(str(u.get("id")) == bot_id for u in data.get("mentions") or [])
            mentioned = mentioned or f"<@{bot_id}>" in str(data.get("content") or "")
            if (data.get("author") or {}).get("id") != bot_id and not mentioned:
                return {**data, **{k: ([] if k != "content" else "") for k in CONTENT_FIELDS if k in data}}
        if event == "GUILD_CREATE" and not session.intents & GUILD_PRESENCES:
            bot_id = str(self.world.bot_user.id)
            return {**data, "members": [m for m in data.get("members", []) if m["user"]["id"] == bot_id]}
        return data

    @property
    def connected(self) -> bool:
        """True when a session has a live, identified connection."""
        return any(s.connection is not None and not s.invalid for s in self.sessions.values())

    async def close(self) -> None:
        for conn in list(self.connections):
            await conn.close(1001)

    # ------------------------------------------------------------------ the websocket

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        conn = GatewayConnection(ws, request, zlib_stream=request.query.get("compress") == "zlib-stream")
        self.log.append({"query": dict(request.query), "zlib_stream": conn.zlib_stream, "time": time.time()})
        self.connections.add(conn)
        conn.send({"op": HELLO, "d": {"heartbeat_interval": self.settings.heartbeat_interval_ms}, "s": None,
                   "t": None})
        session: GatewaySession | None = None
        try:
            async for msg in ws:
                if msg.type.name not in ("TEXT", "BINARY"):
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await self._refuse(conn, 4002, "Error while decoding payload.")
                    break
                op, data = frame.get("op"), frame.get("d")
                if op == HEARTBEAT:
                    conn.send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
                elif op == IDENTIFY:
                    session = await self._identify(conn, data or {})
                    if session is None:
                        break
                elif op == RESUME:
                    session = self._resume(conn, data or {})
                elif op == REQUEST_MEMBERS and session is not None:
                    self._members_chunk(session, data or {})
                elif op in (PRESENCE, VOICE_STATE):
                    continue
                elif session is None:
                    await self._refuse(conn, 4003, "Not authenticated.")
                    break
        finally:
            if session is not None and session.connection is conn:
                session.connection = None
            self.connections.discard(conn)
            await conn.finish()
            self.hub.waiter.notify()
        return ws

    def _token_ok(self, token: Any) -> bool:
        token = str(token or "")
        return (token[4:] if token.startswith("Bot ") else token) == self.settings.token

    async def _refuse(self, conn: GatewayConnection, code: int, reason: str) -> None:
        self.refusals.append(Refusal("GATEWAY", "/gateway", code, code, reason))
        await conn.close(code, reason.encode())

    async def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> GatewaySession | None:
        if not self._token_ok(data.get("token")):
            await self._refuse(conn, 4004, "Authentication failed.")
            return None
        refusal = identify_refusal(data, enabled_privileged=self.settings.privileged_intents)
        if refusal is not None:
            await self._refuse(conn, *refusal)
            return None
        self.identify_count += 1
        session = GatewaySession(secrets.token_hex(16), shard=data.get("shard"), intents=data.get("intents", 0))
        session.connection = conn
        self.sessions[session.session_id] = session
        world = self.world
        guilds: list[Guild] = [g for g in world.guilds.values() if session.owns(g.id)]
        ready: dict[str, Any] = {
            "v": 10, "user": world.bot_user.payload() | {"verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id, "resume_gateway_url": self.settings.gateway_url,
            "session_type": "normal", "application": {"id": str(world.application_id), "flags": 0},
            "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [],
            "geo_ordered_rtc_regions": [], "user_settings": {},
            "shard": session.shard or [0, 1], "_trace": ["localdiscord"],
        }
        session.dispatch("READY", ready)
        for guild in guilds:
            session.dispatch("GUILD_CREATE", self._as_seen_by(session, "GUILD_CREATE", guild.payload(full=True),
                                                              guild.id))
        self.hub.waiter.notify()
        return session

    def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        seq = data.get("seq")
        if session is None or not self._token_ok(data.get("token")) or not session.can_resume_from(seq):
            conn.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        if session.connection is not None and session.connection is not conn:
            old = session.connection
            session.connection = None
            self.hub.spawn(old.close(4000))
        session.connection = conn
        session.resumes += 1
        self.resume_count += 1
        session.replay(seq)
        session.dispatch("RESUMED", {"_trace": ["localdiscord"]})
        self.hub.waiter.notify()
        return session

    def _members_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self.world.guilds.get(int(data.get("guild_id", 0)))
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

    # ------------------------------------------------------------------ faults

    def drop(self, *, abort: bool = True, code: int = 4000) -> int:
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
                self.hub.spawn(conn.close(code))
        return dropped

    def invalidate_sessions(self, *, resumable: bool = False) -> None:
        """Send INVALID_SESSION (op 9) to every connected session; not resumable forces a new IDENTIFY."""
        for session in self.sessions.values():
            if session.connection is not None:
                session.connection.send({"op": INVALID_SESSION, "d": resumable, "s": None, "t": None})
            if not resumable:
                session.invalid = True

    def request_reconnect(self) -> None:
        """Send RECONNECT (op 7): the client closes and resumes."""
        for session in self.sessions.values():
            if session.connection is not None:
                session.connection.send({"op": RECONNECT, "d": None, "s": None, "t": None})
