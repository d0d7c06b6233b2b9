"""Where everything that happens in the local Discord is announced.

Two audiences: the bot, through gateway dispatches (``dispatch``; the gateway listens and routes them to the
right sessions), and tests or the playground, through subscriber events (``emit``, ``subscribe``,
``wait_for_event``). Every change also wakes whoever waits on :attr:`waiter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.localdiscord.models import Waiter

_log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], Any]
DispatchSink = Callable[[str, dict[str, Any], "int | None"], None]


@dataclass
class ServerEvent:
    """A channel event as subscribers receive it (``to_dict`` is JSON-able)."""

    type: str
    data: dict[str, Any]
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, "type": self.type, "time": self.time}


class EventHub:
    """Gateway dispatches out to the gateway, subscriber events out to tests, and background tasks."""

    def __init__(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.events: list[ServerEvent] = []
        self._subscribers: list[EventCallback] = []
        self._sinks: list[DispatchSink] = []
        self._background: set[asyncio.Task[Any]] = set()

    def listen(self, sink: DispatchSink) -> None:
        """Receive every gateway dispatch as ``sink(event_name, data, guild_id)`` (the gateway does)."""
        self._sinks.append(sink)

    def dispatch(self, event: str, data: dict[str, Any], guild_id: int | None) -> None:
        """Send a gateway event about ``guild_id`` (None: a DM or no guild) to the bot."""
        for sink in self._sinks:
            sink(event, data, guild_id)

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event_dict)`` for every channel event (message_create/update/delete,
        reaction_add/remove, interaction_create, interaction_response). Coroutine functions are scheduled as
        tasks. Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        event = ServerEvent(kind, data)
        self.events.append(event)
        payload = event.to_dict()
        for callback in list(self._subscribers):
            try:
                result = callback(payload)
                if inspect.isawaitable(result):
                    self.spawn(result)
            except Exception:  # a broken subscriber must not break the bot's request
                _log.exception("localdiscord subscriber failed")
        self.waiter.notify()

    async def wait_for_event(self, predicate: Callable[[dict[str, Any]], Any] | None = None,
                             timeout: float = 10.0, *, since: int | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """The first subscriber event (as a dict) after index ``since`` (default: from now) matching."""
        start = len(self.events) if since is None else since

        def find() -> dict[str, Any] | None:
            for event in self.events[start:]:
                data = event.to_dict()
                if predicate is None or predicate(data):
                    return data
            return None

        return await self.waiter.until(find, timeout, "a matching event")

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        """Run ``awaitable`` in the background; :meth:`close` cancels what is still running."""
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def close(self) -> None:
        for task in list(self._background):
            task.cancel()
