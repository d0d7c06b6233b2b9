"""Playground settings and page facts, without starting anything: the bot's settings point at the local server
and a per-run folder, ``tiny`` gets light defaults only where the config is silent, and a fallback is announced."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.config import settings_from_mapping
from bot.playground.app import (
    REAL_WEIGHTS_HINT,
    PlaygroundPortError,
    in_daemon_thread,
    model_info,
    playground_settings,
    start_playground,
    tiny_defaults,
)


def test_settings_point_the_real_bot_at_the_local_server_and_a_per_run_folder(tmp_path: Path) -> None:
    settings = settings_from_mapping({
        "discord": {"token": "real-discord-token", "guild_ids": [1]},
        "database": {"url": "postgresql+asyncpg://db/imagine"},
        "rate_limits": {"images_per_window": 5},
    }, environ={})
    server = SimpleNamespace(token="local-token", api_base_url="http://127.0.0.1:1/api/v10",
                             gateway_url="ws://127.0.0.1:1/gateway", guild=SimpleNamespace(id=42))
    effective = playground_settings(settings, server, tmp_path)  # type: ignore[arg-type]
    assert effective.token == "local-token"  # the real token never goes to the playground
    assert effective.discord.api_base_url == server.api_base_url
    assert effective.discord.gateway_url == server.gateway_url
    assert effective.discord.guild_ids == [42]
    assert effective.database.url == f"sqlite+aiosqlite:///{(tmp_path / 'playground.db').as_posix()}"
    assert effective.storage.images_dir == tmp_path / "images"
    assert effective.rate_limits.images_per_window == 5  # limits stay as configured
    assert settings.token == "real-discord-token"  # the caller's settings are untouched


def test_tiny_defaults_only_fill_what_the_config_does_not_set() -> None:
    silent = settings_from_mapping({"generation": {"model": "tiny"}}, environ={}).generation
    assert tiny_defaults(silent) == {"default_width": 256, "default_height": 256, "default_steps": 8}
    chosen = settings_from_mapping({"generation": {"model": "tiny", "default_width": 320, "default_steps": 3,
                                                   "min_size": 288}}, environ={}).generation
    assert tiny_defaults(chosen) == {"default_height": 288}


def test_a_fallback_model_is_announced_with_how_to_get_real_weights() -> None:
    settings = settings_from_mapping({"generation": {"model": "owner/missing"}}, environ={})
    fallback = SimpleNamespace(name="tiny", is_fallback=True, device="cpu",
                               banner="Running the built-in 'tiny' test model because 'owner/missing' could not be "
                                      "loaded: not in the cache.")
    info = model_info(fallback, settings)
    assert info["is_fallback"] and "owner/missing" in info["banner"] and info["how_to"] == REAL_WEIGHTS_HINT
    assert "generation.model" in info["how_to"] and "README" in info["how_to"]
    configured_tiny = model_info(SimpleNamespace(name="tiny", is_fallback=False, device="cpu"), settings)
    assert configured_tiny["banner"] is None and "generation.model" in configured_tiny["note"]
    real = model_info(SimpleNamespace(name="sd15", is_fallback=False, device="cuda"), settings)
    assert real["banner"] is None and real["note"] is None


async def test_a_busy_port_fails_at_once_with_what_to_change(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = settings_from_mapping({"generation": {"model": "tiny"}}, environ={})
        with pytest.raises(PlaygroundPortError, match="--port or playground.port"):
            # No model is loaded first: the page's port is taken before anything slow starts.
            await start_playground(settings, port=port, data_dir=tmp_path / "data", model=object())


async def test_work_in_a_daemon_thread_returns_or_raises_like_to_thread() -> None:
    assert await in_daemon_thread(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        await in_daemon_thread(divmod, 1, 0)


def test_the_start_up_text_warns_when_the_page_listens_beyond_loopback() -> None:
    from bot.playground.app import startup_text

    def text(host: str) -> str:
        settings = settings_from_mapping({"playground": {"host": host, "port": 8765}}, environ={})
        info = {"is_fallback": False, "model": "sd15", "configured_model": "sd15", "device": "cuda"}
        shown = startup_text(SimpleNamespace(settings=settings, model_info=info, url="http://127.0.0.1:8765/"))
        return " ".join(shown.split())  # the notes are wrapped to the terminal

    assert "WARNING" in text("0.0.0.0") and "beyond this machine" in text("0.0.0.0")
    assert "WARNING" in text("192.168.1.5")
    assert "WARNING" not in text("127.0.0.1") and "beyond" not in text("localhost")
