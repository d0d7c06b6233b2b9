"""The operations endpoint on its own: a real aiohttp server on a free loopback port, its own registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from bot.ops.health import HealthChecks
from bot.ops.metrics import REFUSAL_KINDS, BotMetrics
from bot.ops.server import MetricsPortError, OpsServer
from generation.metrics import IMAGE_OUTCOMES

pytestmark = pytest.mark.timeout(30)


async def ready() -> str | None:
    return None


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[OpsServer, BotMetrics, HealthChecks]]:
    metrics, health = BotMetrics(), HealthChecks()
    server = OpsServer(metrics.registry, health)
    await server.start("127.0.0.1", 0)
    try:
        yield server, metrics, health
    finally:
        await server.close()


async def get(server: OpsServer, path: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.port}{path}") as response:
        text = await response.text()
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, response.headers["Content-Type"], body if body is not None else text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, keyed by name and sorted labels (parsing fails on bad text)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_page_parses_as_prometheus_text(served: tuple[OpsServer, BotMetrics, HealthChecks]) -> None:
    server, metrics, _ = served
    metrics.refused("filtered", 2)
    metrics.refused("invalid", 0)
    metrics.withheld(1)
    now = datetime.now(UTC)
    metrics.acknowledged(now - timedelta(milliseconds=300), now)

    status, content_type, text = await get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    found = samples(text)
    assert found[("imagine_refusals_total", (("kind", "filtered"),))] == 1
    assert found[("imagine_refusals_total", (("kind", "invalid"),))] == 1
    assert found[("imagine_refusals_total", (("kind", "rate_limited"),))] == 0
    assert found[("imagine_images_total", (("outcome", "refused"),))] == 2  # an invalid request asks for nothing
    assert found[("imagine_images_total", (("outcome", "withheld"),))] == 1
    assert found[("imagine_interaction_ack_seconds_count", ())] == 1
    assert found[("imagine_interaction_ack_seconds_sum", ())] == pytest.approx(0.3)
    assert found[("imagine_interaction_ack_seconds_bucket", (("le", "0.25"),))] == 0
    assert found[("imagine_interaction_ack_seconds_bucket", (("le", "0.5"),))] == 1
    names = {name for name, _ in found}
    for name in ("imagine_queue_depth", "imagine_workers_alive", "imagine_steps_per_second",
                 "imagine_queue_wait_seconds_count", "imagine_job_duration_seconds_count", "imagine_batch_size_count"):
        assert name in names
    assert {dict(labels)["outcome"] for name, labels in found if name == "imagine_images_total"} == set(IMAGE_OUTCOMES)
    assert {dict(labels)["kind"] for name, labels in found if name == "imagine_refusals_total"} == set(REFUSAL_KINDS)


async def test_healthz_is_503_naming_what_is_not_ready_then_200(
        served: tuple[OpsServer, BotMetrics, HealthChecks]) -> None:
    server, _, health = served
    status, content_type, body = await get(server, "/healthz")
    assert status == 503 and content_type.startswith("application/json")
    assert body["status"] == "not ready" and "startup" in body["not_ready"]  # nothing registered yet

    connected = False

    async def gateway() -> str | None:
        return None if connected else "not connected to Discord yet"

    health.add("gateway", gateway)
    health.add("database", ready)
    health.add("queue", ready)
    status, _, body = await get(server, "/healthz")
    assert status == 503
    assert body["not_ready"] == {"gateway": "not connected to Discord yet"}
    assert body["checks"]["database"] == {"ready": True} and body["checks"]["queue"] == {"ready": True}

    connected = True
    status, _, body = await get(server, "/healthz")
    assert status == 200
    assert body == {"status": "ready", "not_ready": {},
                    "checks": {"gateway": {"ready": True}, "database": {"ready": True}, "queue": {"ready": True}}}


async def test_a_check_that_raises_or_hangs_means_not_ready() -> None:
    health = HealthChecks(timeout=0.05)
    never = asyncio.Event()

    async def hangs() -> str | None:
        await never.wait()
        return None

    async def raises() -> str | None:
        raise ConnectionRefusedError("connection refused")

    health.add("queue", hangs)
    health.add("database", raises)
    health.add("gateway", ready)
    report = await health.run()
    assert not report.ready
    assert report.not_ready == {"queue": "no answer within 0.05 s",
                                "database": "ConnectionRefusedError: connection refused"}


async def test_adding_a_check_again_replaces_it() -> None:
    """A queue backend replaces the local queue's check under the same name."""
    health = HealthChecks()
    health.add("queue", ready)

    async def redis_down() -> str | None:
        return "Redis is unreachable"

    health.add("queue", redis_down)
    assert health.names == ("queue",)
    assert (await health.run()).not_ready == {"queue": "Redis is unreachable"}


async def test_a_busy_port_is_one_clear_message(served: tuple[OpsServer, BotMetrics, HealthChecks]) -> None:
    taken, metrics, health = served
    second = OpsServer(metrics.registry, health)
    with pytest.raises(MetricsPortError) as caught:
        await second.start("127.0.0.1", taken.port)
    message = str(caught.value)
    assert f"127.0.0.1:{taken.port}" in message and "metrics.port" in message and "metrics.enabled" in message
    assert (await get(taken, "/healthz"))[0] == 503  # the first one still serves


async def test_closed_server_stops_listening() -> None:
    server = OpsServer(BotMetrics().registry, HealthChecks())
    await server.start("127.0.0.1", 0)
    await server.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(server, "/metrics")
