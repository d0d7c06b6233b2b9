"""Smoke run of the REAL bot in-process against the local Discord-compatible server: /imagine -> a PNG.

Everything is real except Discord itself: config, SQLite file (migrated), tiny model on CPU, worker, journal,
cogs, delivery. The end-to-end suite proper lives next to this file; this is the one quick check that the
composition root wires it all together.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.bootstrap import start_bot
from bot.config import Settings
from bot.localdiscord import LocalDiscordServer
from tests.helpers import local_bot_settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def smoke_settings(server: LocalDiscordServer, tmp_path: Path) -> Settings:
    return local_bot_settings(server, tmp_path)


async def test_imagine_posts_a_png(tmp_path: Path) -> None:
    async with LocalDiscordServer(token="smoke-token-0123456789") as server:
        running = await start_bot(smoke_settings(server, tmp_path))
        try:
            started = time.monotonic()
            interaction = await server.send_command(server.members["bob"], server.general, "imagine",
                                                    {"prompt": "a red cube", "seed": 42})
            await interaction.wait_for_ack(timeout=3)
            assert interaction.ack_latency is not None and interaction.ack_latency < 3

            def is_result(message) -> bool:
                return not message.ephemeral and any(a.data[:8] == PNG_MAGIC for a in message.attachments)

            result = await server.wait_for_message(is_result, timeout=120, include_existing=True)
            png = result.attachments[0]
            assert png.filename.endswith(".png")
            assert f"<@{server.members['bob'].id}>" in result.content
            assert result.embeds and "42" in str(result.embeds[0])
            custom_ids = result.custom_ids()
            assert any(cid.startswith("imagine:rerun:") for cid in custom_ids)
            assert time.monotonic() - started < 120

            # The ephemeral response ends with a link to the result, once the job records the message id.
            done = await interaction.wait_for_response(
                timeout=30, predicate=lambda m: m.ephemeral and m.content.startswith("Done"))
            assert str(result.id) in done.content
            from bot.storage import repository

            job = await repository.find_job_by_message(running.services.db, result.id)
            assert job is not None and job.status == "done" and job.params.seed == 42
        finally:
            await running.close()
