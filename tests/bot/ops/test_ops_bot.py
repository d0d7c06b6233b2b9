"""/healthz and /metrics of the real bot: the composition root's wiring, through the local Discord-compatible
server, with real SQLite and a real aiohttp server on a free loopback port (the engine is a fake: no model)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bot import cli
from bot.bootstrap import build_services, gateway_check, start_bot
from bot.config import Settings
from bot.discord.client import create_bot
from bot.localdiscord import LocalDiscordServer
from bot.ops.health import HealthChecks
from bot.ops.server import MetricsPortError, OpsServer
from tests.helpers import SolidEngine, local_bot_settings

pytestmark = pytest.mark.timeout(180)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[LocalDiscordServer]:
    async with LocalDiscordServer(token="ops-token-0123456789abcdef") as local:
        yield local


def settings_for(server: LocalDiscordServer, tmp_path: Path, **sections: Any) -> Settings:
    return local_bot_settings(server, tmp_path, content_filter={"blocked_terms": ["forbidden"]},
                              rate_limits={"images_per_window": 100, "max_queued_per_user": 10}, **sections)


async def get(port: int, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_not_ready_before_the_gateway_is(server: LocalDiscordServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    services = await build_services(settings, engine=SolidEngine())
    bot = create_bot(services)  # built, not logged in: what start_bot has before READY
    services.health.add("gateway", gateway_check(bot))
    ops = OpsServer(services.metrics.registry, services.health)
    await ops.start("127.0.0.1", 0)
    try:
        status, body = await get(ops.port, "/healthz")
        assert status == 503
        assert body["not_ready"] == {"gateway": "not connected to Discord yet (waiting for READY)"}
        assert body["checks"]["database"] == {"ready": True} and body["checks"]["queue"] == {"ready": True}
    finally:
        await ops.close()
        await bot.close()
        await services.close()


async def test_ready_bot_serves_health_and_metrics_until_it_closes(server: LocalDiscordServer,
                                                                   tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    services = await build_services(settings, engine=SolidEngine())
    running = await start_bot(settings, services=services)
    try:
        assert running.ops is not None and running.ops.port
        port = running.ops.port
        status, body = await get(port, "/healthz")
        assert (status, body["status"], set(body["checks"])) == (200, "ready", {"gateway", "database", "queue"})

        bob = server.members["bob"]
        made = await server.send_command(bob, server.general, "imagine", {"prompt": "a red cube", "count": 2})
        await made.wait_for_response(timeout=60, predicate=lambda m: any(a.data[:8] == PNG for a in m.attachments))
        refused = await server.send_command(bob, server.general, "imagine", {"prompt": "a forbidden cube"})
        await refused.wait_for_response(timeout=30, predicate=lambda m: m.ephemeral and "refused" in m.content)

        found = await scrape(port)
        assert found[("imagine_images_total", (("outcome", "done"),))] == 2
        assert found[("imagine_images_total", (("outcome", "refused"),))] == 1
        assert found[("imagine_refusals_total", (("kind", "filtered"),))] == 1
        assert found[("imagine_queue_wait_seconds_count", ())] == 1
        assert found[("imagine_job_duration_seconds_count", ())] == 1
        assert found[("imagine_batch_size_sum", ())] == 2
        assert found[("imagine_interaction_ack_seconds_count", ())] == 2
        assert found[("imagine_workers_alive", ())] == 1

        await running.services.db.close()
        status, body = await get(port, "/healthz")
        assert status == 503 and body["not_ready"] == {"database": "the database connection is closed"}
    finally:
        await running.close(close_services=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(port, "/healthz")


async def test_busy_metrics_port_stops_the_start_before_anything_is_built(server: LocalDiscordServer,
                                                                          tmp_path: Path) -> None:
    """No model load and no migration is wasted on a start that cannot serve its metrics."""
    taken = OpsServer(CollectorRegistry(), HealthChecks())
    await taken.start("127.0.0.1", 0)
    try:
        settings = settings_for(server, tmp_path, metrics={"port": taken.port})
        with pytest.raises(MetricsPortError, match="metrics.port"):
            await start_bot(settings)
        assert not (tmp_path / "imagine.db").exists()
        assert not server.connected
    finally:
        await taken.close()


async def test_metrics_disabled_serves_nothing(server: LocalDiscordServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path, metrics={"enabled": False})
    running = await start_bot(settings, services=await build_services(settings, engine=SolidEngine()))
    try:
        assert running.ops is None
        assert set(running.services.health.names) == {"gateway", "database", "queue"}  # still checked
    finally:
        await running.close(close_services=True)


def test_run_with_a_busy_metrics_port_exits_2_with_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               restore_logging: None) -> None:
    database = tmp_path / "imagine.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"discord": {"token": "never-used-0123456789"},
                                          "database": {"url": f"sqlite+aiosqlite:///{database}"},
                                          "metrics": {"port": port}}), encoding="utf-8")
        assert cli.run_main(argparse.Namespace(command="run", config=str(config))) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "metrics.port" in err and "Traceback" not in err
    assert not database.exists()  # it stopped before migrating or loading anything
