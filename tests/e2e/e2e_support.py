"""Helpers of the end-to-end suite (imported by ``conftest.py`` and the tests as ``e2e_support``).

* :func:`e2e_config` -- the config of an e2e bot: tiny model on CPU, small images, a temp SQLite file and
  images dir, the local server's URLs (the only way the bot reaches it: nothing is monkeypatched).
* :class:`BotFactory` -- starts REAL bots in-process (``build_services`` + ``start_bot``) and closes them.
* :class:`E2E` -- what a test does as a member and waits for (``imagine``, ``job_of``, ``eventually``).
* :data:`TIMINGS` -- ack latency of every interaction and time to image of every ``E2E.imagine``, gathered
  across the session and written to ``$IMAGINE_ARTIFACTS_DIR/e2e_timings.json`` (else the temp dir).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.bootstrap import RunningBot, build_services, start_bot
from bot.config import Settings, settings_from_mapping
from bot.localdiscord import LocalDiscordServer, Member, Message
from bot.storage import repository
from bot.storage.records import JobRecord
from tests.helpers import eventually, local_bot_config

E2E_TOKEN = "e2e-bot-token-0123456789abcdef"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMINGS_FILE = "e2e_timings.json"
ACK_DEADLINE = 3.0


# --- timings ------------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Samples gathered across the whole session: (test name, what, seconds)."""

    ack: list[tuple[str, str, float]] = field(default_factory=list)
    time_to_image: list[tuple[str, str, float]] = field(default_factory=list)
    late_acks: list[tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def summary(values: list[float]) -> dict[str, float | int]:
        if not values:
            return {"count": 0}
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return {"count": len(values), "p50": round(statistics.median(values), 4), "p95": round(p95, 4),
                "max": round(max(values), 4), "mean": round(statistics.fmean(values), 4)}

    def report(self) -> dict[str, Any]:
        by_kind: dict[str, list[float]] = {}
        for _, what, value in self.time_to_image:
            by_kind.setdefault(what, []).append(value)
        return {
            "ack_latency_seconds": self.summary([v for _, _, v in self.ack]),
            "time_to_image_seconds": self.summary([v for _, _, v in self.time_to_image]),
            "time_to_image_by_kind": {what: self.summary(values) for what, values in sorted(by_kind.items())},
            "late_acks": [{"test": t, "what": w} for t, w in self.late_acks],
            "samples": {
                "ack": [{"test": t, "what": w, "seconds": round(v, 4)} for t, w, v in self.ack],
                "time_to_image": [{"test": t, "what": w, "seconds": round(v, 4)} for t, w, v in self.time_to_image],
            },
        }

    def write(self) -> Path:
        base = os.environ.get("IMAGINE_ARTIFACTS_DIR") or tempfile.gettempdir()
        path = Path(base) / TIMINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report(), indent=2), encoding="utf-8")
        return path


TIMINGS = Timings()


def _interaction_label(interaction: Any) -> str:
    data = interaction.payload.get("data") or {}
    if interaction.type == 2:
        return f"/{data.get('name', '?')}"
    if interaction.type == 3:
        return f"button {str(data.get('custom_id', '?')).rsplit(':', 1)[0]}"
    return f"type {interaction.type}"


def record_acks(server: LocalDiscordServer, test: str) -> None:
    """Every interaction's ack latency (and any callback after the 3 s deadline) into :data:`TIMINGS`."""
    for interaction in server.interactions.values():
        label = _interaction_label(interaction)
        if interaction.ack_latency is not None:
            TIMINGS.ack.append((test, label, interaction.ack_latency))
        if interaction.late_callback:
            TIMINGS.late_acks.append((test, label))


# --- settings -----------------------------------------------------------------------------------------------


def e2e_config(server: LocalDiscordServer, data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The config mapping of an e2e bot (see :func:`tests.helpers.local_bot_config`)."""
    return local_bot_config(server, data_dir, **sections)


# --- bots ---------------------------------------------------------------------------------------------------


class BotFactory:
    """Starts real bots (``build_services`` + ``start_bot``) against ``server``; :meth:`close_all` at teardown."""

    def __init__(self, server: LocalDiscordServer, data_dir: Path, model: Any) -> None:
        self.server = server
        self.data_dir = data_dir
        self.model = model
        self.running: list[RunningBot] = []

    def config(self, **sections: dict[str, Any]) -> dict[str, Any]:
        return e2e_config(self.server, self.data_dir, **sections)

    def settings(self, **sections: dict[str, Any]) -> Settings:
        return settings_from_mapping(self.config(**sections), environ={})

    async def start(self, settings: Settings | None = None) -> RunningBot:
        """A logged-in, ready bot with fresh services (its own worker) on the shared ``tiny`` pipeline."""
        settings = settings or self.settings()
        services = await build_services(settings, model=self.model)
        running = await start_bot(settings, services=services)
        self.running.append(running)
        return running

    async def stop(self, running: RunningBot) -> None:
        if running in self.running:
            self.running.remove(running)
        await running.close(close_services=True)

    async def close_all(self) -> None:
        while self.running:
            await self.stop(self.running[-1])


# --- member-side helpers ------------------------------------------------------------------------------------


def png_of(message: Message) -> bytes | None:
    """The first PNG attached to ``message`` (None when there is none)."""
    return next((a.data for a in message.attachments if a.data[:8] == PNG_MAGIC), None)


def is_result_for(member: Member, channel_id: int | None = None) -> Callable[[Message], bool]:
    """A public result for ``member``: not ephemeral, mentions them, carries a PNG."""
    def check(message: Message) -> bool:
        return (not message.ephemeral and f"<@{member.id}>" in message.content and png_of(message) is not None
                and (channel_id is None or message.channel_id == channel_id))
    return check


def imagine_label(options: dict[str, Any], note: str = "") -> str:
    """``/imagine steps=24 width=256 height=256`` (``/imagine defaults`` = 2 steps, 64x64 in the e2e config)."""
    parts = [f"{key}={options[key]}" for key in ("steps", "width", "height", "count") if key in options]
    return " ".join(["/imagine", *(parts or ["defaults"])] + ([f"({note})"] if note else []))


class E2E:
    """What a test does as a member of the local server's guild, and waits for."""

    def __init__(self, server: LocalDiscordServer, test: str) -> None:
        self.server = server
        self.test = test

    def record_time_to_image(self, what: str, seconds: float) -> None:
        TIMINGS.time_to_image.append((self.test, what, seconds))

    async def imagine(self, member: Member, prompt: str, *, channel: Any = None, timeout: float = 60.0,  # noqa: ASYNC109
                      **options: Any) -> tuple[Any, Message]:
        """/imagine as ``member``; returns the interaction and its public result (results that were already
        there are ignored). Records the time from the command to the result."""
        channel = channel or self.server.general
        before = {m.id for m in self.server.bot_messages(include_deleted=True)}
        started = time.monotonic()
        interaction = await self.server.send_command(member, channel, "imagine", {"prompt": prompt, **options})
        check = is_result_for(member, channel.id)
        result = await self.server.wait_for_message(lambda m: m.id not in before and check(m), timeout=timeout,
                                                    include_existing=True)
        self.record_time_to_image(imagine_label(options), time.monotonic() - started)
        return interaction, result

    async def wait_for_new_result(self, member: Member, *, exclude: set[int] | tuple[int, ...] = (),
                                  timeout: float = 60.0) -> Message:  # noqa: ASYNC109
        """The next public result for ``member`` whose id is not in ``exclude``."""
        check = is_result_for(member)
        return await self.server.wait_for_message(lambda m: m.id not in exclude and check(m), timeout=timeout,
                                                  include_existing=True)

    @staticmethod
    async def job_of(running: RunningBot, message: Message | int,
                     timeout: float = 10.0) -> JobRecord:  # noqa: ASYNC109
        """The journalled job whose result is ``message`` (the id is recorded right after posting)."""
        message_id = message if isinstance(message, int) else message.id
        return await eventually(lambda: repository.find_job_by_message(running.services.db, message_id),
                                f"a job recorded for message {message_id}", timeout)

    @staticmethod
    async def job_with_status(running: RunningBot, job_id: int, status: str,
                              timeout: float = 30.0) -> JobRecord:  # noqa: ASYNC109
        async def check() -> JobRecord | None:
            job = await repository.get_job(running.services.db, job_id)
            return job if job is not None and job.status == status else None

        return await eventually(check, f"job {job_id} {status}", timeout)
