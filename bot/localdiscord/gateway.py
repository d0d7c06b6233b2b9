"""Gateway v10 sessions: sequence numbers, a replay buffer for RESUME, and ordered (optionally zlib) frames.

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
import zlib
from collections import deque
from typing import Any

from aiohttp import web

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
