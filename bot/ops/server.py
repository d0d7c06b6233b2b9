"""The bot's operations endpoint: ``/metrics`` (Prometheus text format) and ``/healthz`` (readiness as JSON).

One small aiohttp server in the bot's event loop, on loopback by default (``metrics.host``/``metrics.port``):
Discord never calls the bot, so nothing here has to face the internet. The registry is collected in a thread
(a few milliseconds of formatting and /proc reads per scrape that the loop need not wait for); that is safe
because prometheus_client's metrics are thread-safe and no metric reads loop-owned state when collected.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bot.config import ConfigError
from bot.ops.health import HealthChecks

log = logging.getLogger(__name__)


class MetricsPortError(ConfigError):
    """The metrics address cannot be bound; the message says which keys to change."""


class OpsServer:
    """``/metrics`` and ``/healthz`` over a registry and a set of readiness checks."""

    def __init__(self, registry: CollectorRegistry, health: HealthChecks) -> None:
        self.registry = registry
        self.health = health
        self._runner: web.AppRunner | None = None
        self.host: str | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        report = await self.health.run()
        return web.json_response(report.as_json(), status=200 if report.ready else 503)

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host``:``port`` (0: any free port, then read :attr:`port`)."""
        runner = web.AppRunner(self.app(), access_log=None)  # a scrape every few seconds is not news
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsPortError(
                f"Cannot serve metrics on {host}:{port} ({exc.strerror or exc}). Is another imagine-bot running? "
                "Choose another metrics.port in config.yaml (0 picks a free one) or set metrics.enabled: false."
            ) from exc
        self._runner = runner
        self.host, self.port = runner.addresses[0][:2]
        log.info("metrics on http://%s:%s/metrics, readiness on /healthz", host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
