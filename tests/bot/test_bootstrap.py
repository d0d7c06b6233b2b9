"""The composition root: start-up errors an admin can fix, the no-token path, recovery, graceful shutdown."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bot import bootstrap, cli
from bot.clock import utcnow
from bot.config import Settings, settings_from_mapping
from bot.localdiscord import LocalDiscordServer
from bot.storage import repository
from bot.storage.db import Database, upgrade_to_head
from bot.storage.models import Job
from tests.helpers import local_bot_settings, new_job, params

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("restore_logging")]

PNG = b"\x89PNG\r\n\x1a\n"


def test_bot_class_is_picked_at_runtime() -> None:
    from discord.ext import commands

    from bot.discord.client import ShardedImagineBot, create_bot

    plain = create_bot(types.SimpleNamespace(settings=settings_from_mapping({}, environ={})))
    sharded = create_bot(types.SimpleNamespace(settings=settings_from_mapping(
        {"discord": {"sharded": True, "shard_count": 2}}, environ={})))
    assert not isinstance(plain, commands.AutoShardedBot)
    assert isinstance(sharded, ShardedImagineBot) and isinstance(sharded, commands.AutoShardedBot)
    assert sharded.shard_count == 2
    assert plain.intents.value == sharded.intents.value


def run_args(config: Path | str) -> argparse.Namespace:
    return argparse.Namespace(command="run", config=str(config))


def test_bad_config_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("discord:\n  progress_edit_seconds: -1\n  tokn: x\n", encoding="utf-8")
    assert cli.run_main(run_args(config)) == 2
    err = capsys.readouterr().err
    assert "discord.progress_edit_seconds" in err and "discord.tokn" in err and "Traceback" not in err


def test_missing_named_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run_main(run_args(tmp_path / "nope.yaml")) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.fixture
def fake_playground(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def run_playground(settings: Any) -> int:
        calls.append(settings)
        return 0

    package = types.ModuleType("bot.playground")
    module = types.ModuleType("bot.playground.app")
    module.run_playground = run_playground  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bot.playground", package)
    monkeypatch.setitem(sys.modules, "bot.playground.app", module)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    return calls


def test_no_token_explains_and_starts_the_playground(tmp_path: Path, fake_playground: list[Any],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("playground:\n  port: 9999\n", encoding="utf-8")
    assert cli.run_main(run_args(config)) == 0
    err = capsys.readouterr().err
    assert "discord.com/developers/applications" in err and "DISCORD_TOKEN" in err and "playground" in err
    [settings] = fake_playground
    assert settings.playground.port == 9999


def test_playground_command_takes_the_port(fake_playground: list[Any]) -> None:
    assert cli.playground_main(argparse.Namespace(command="playground", config=None, port=4321)) == 0
    assert fake_playground[0].playground.port == 4321


def test_model_load_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "x" * 30)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'bot.db'}\n"
        f"storage:\n  images_dir: {tmp_path / 'images'}\n"
        f"generation:\n  model: {tmp_path / 'missing-model'}\n  device: cpu\n", encoding="utf-8")
    assert cli.run_main(run_args(config)) == 2
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "missing-model" in err and "Traceback" not in err
    assert "x" * 30 not in err


def bot_settings(server: LocalDiscordServer, tmp_path: Path, database_url: str | None = None,
                 **generation: Any) -> Settings:
    database = {"database": {"url": database_url}} if database_url else {}
    return local_bot_settings(server, tmp_path, discord={"progress_edit_seconds": 1.0}, generation=generation,
                              **database)


async def test_recovery_delivers_or_fails_each_unfinished_job(tmp_path: Path, db_url: str) -> None:
    """The whole bot on SQLite and on PostgreSQL: migrations, start-up sweep, recovery, delivery."""
    async with LocalDiscordServer(token="recovery-token-0123456789") as server:
        settings = bot_settings(server, tmp_path, db_url)
        await upgrade_to_head(settings.database.url)
        db = Database.connect(settings.database.url)
        bob, carol = server.members["bob"], server.members["carol"]
        common = dict(guild_id=server.guild.id, negative_prompt="", steps=2, guidance=7.5, width=64, height=64,
                      count=1, scheduler="euler", model="tiny")
        # Token presumably still valid, but Discord (here: the local server) refuses it -> channel message.
        refused_token = await new_job(
            db, channel_id=server.general.id, user_id=bob.id, prompt="recovered one", seed=1,
            interaction_id=None, interaction_token="not-a-real-token-" * 3, application_id=server.application_id,
            **common)
        # Queued an hour ago: its token has expired -> channel message mentioning the member.
        old = await new_job(
            db, channel_id=server.art.id, user_id=carol.id, prompt="recovered two", seed=2,
            interaction_id=None, interaction_token="expired-token-" * 3, application_id=server.application_id,
            **common)
        await repository.mark_running(db, old.id)  # it was running when the bot stopped: starts over
        async with db.session(write=True) as session:
            await session.execute(update(Job).where(Job.id == old.id).values(queued_at=utcnow() - timedelta(hours=1)))
        gone = await new_job(db, channel_id=424242, user_id=bob.id, prompt="nowhere", seed=3,
                                           **common)
        await db.close()

        running = await bootstrap.start_bot(settings)
        try:
            first = await server.wait_for_message(
                lambda m: any(a.data[:8] == PNG for a in m.attachments) and "recovered one" in str(m.embeds),
                timeout=60, include_existing=True)
            second = await server.wait_for_message(
                lambda m: any(a.data[:8] == PNG for a in m.attachments) and "recovered two" in str(m.embeds),
                timeout=60, include_existing=True)
            assert first.channel_id == server.general.id and f"<@{bob.id}>" in first.content
            assert second.channel_id == server.art.id and f"<@{carol.id}>" in second.content
            await running.services.journal.wait_idle()
            services_db = running.services.db
            failed = await repository.get_job(services_db, gone.id)
            assert failed.status == "failed" and "424242" in failed.error
            assert failed.started_at is None and running.bot.recovered  # never re-queued: no GPU time spent
            for job_id, message in ((refused_token.id, first), (old.id, second)):
                job = await repository.get_job(services_db, job_id)
                assert job.status == "done" and job.message_id == message.id
        finally:
            await running.close()


async def test_sigterm_shuts_down_in_order(tmp_path: Path) -> None:
    async with LocalDiscordServer(token="signal-token-0123456789") as server:
        settings = bot_settings(server, tmp_path)
        task = asyncio.create_task(bootstrap.run_bot(settings))
        await server.wait_until_connected(timeout=120)
        await server.wait_until(lambda: server.find_command("imagine", server.guild.id), 30, "command sync")
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 60) == 0
        loop = asyncio.get_running_loop()
        assert not loop.remove_signal_handler(signal.SIGTERM)  # ours was taken off again


async def test_with_the_redis_backend_the_bot_loads_no_model(tmp_path: Path) -> None:
    """The bot process needs no GPU and no model: a model that could not even be loaded here is fine, and the
    bot starts (and accepts jobs) while Redis is unreachable, saying so in its status."""
    from generation.request import GenerationRequest

    settings = settings_from_mapping({
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"},
        "storage": {"images_dir": str(tmp_path / "images")},
        "generation": {"model": str(tmp_path / "no-such-model.safetensors")},
        "queue": {"backend": "redis", "redis_url": "redis://127.0.0.1:9/0"},  # nothing listens on port 9
    }, environ={})
    services = await bootstrap.build_services(settings)
    try:
        assert services.engine is None and services.worker.engine is None
        assert services.model.name == "no-such-model.safetensors" and services.model.device == "remote"
        assert not services.worker.healthy and services.worker.status()["backend"] == "redis"
        handle = services.worker.submit(GenerationRequest(params(scheduler="euler_a"), requester_id="1"))
        assert services.worker.position(handle.job_id) == 1  # queued, waiting for Redis and a worker
    finally:
        await services.close()
