"""Shared fixtures of the end-to-end suite (helpers live in ``e2e_support.py``).

All opt-in, nothing autouse, so tests that build their own server (``test_smoke.py``, ``test_contests.py``)
are not affected:

* ``discord_server`` -- a started :class:`LocalDiscordServer` (token ``E2E_TOKEN``). At teardown it records
  every interaction's ack latency into the suite's timings and asserts ``server.unknown_routes`` is empty.
* ``tiny_model`` -- the ``tiny`` pipeline, loaded once per session and reused by every in-process bot.
* ``bots`` -- a :class:`e2e_support.BotFactory` (``bots.settings(**sections)``, ``await bots.start(settings)``);
  every bot it started is closed at teardown.
* ``bot`` -- a bot started with the default e2e settings.
* ``e2e`` -- :class:`e2e_support.E2E` (``imagine``, ``wait_for_new_result``, ``job_of``, ``job_with_status``).

Test modules import the helpers with ``from e2e_support import ...`` (``e2e_config``, ``eventually``, ``png_of``,
``is_result_for``, ``PNG_MAGIC``, ``ACK_DEADLINE``...): this conftest registers that module, because the suite
runs with ``--import-mode=importlib`` where a test module cannot import its neighbours directly.

The ack latency p50/max and time to image across the session are printed in the terminal summary and
written to ``$IMAGINE_ARTIFACTS_DIR/e2e_timings.json`` (else the system temp dir).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bot.bootstrap import RunningBot
from bot.localdiscord import LocalDiscordServer


def _load_support() -> ModuleType:
    """Import ``e2e_support.py`` as a top-level module (the suite runs with ``--import-mode=importlib``, where
    test modules cannot import their neighbours), so the tests can ``from e2e_support import ...``."""
    if "e2e_support" in sys.modules:
        return sys.modules["e2e_support"]
    spec = importlib.util.spec_from_file_location("e2e_support", Path(__file__).with_name("e2e_support.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["e2e_support"] = module
    spec.loader.exec_module(module)
    return module


support = _load_support()
E2E, E2E_TOKEN, TIMINGS, BotFactory = support.E2E, support.E2E_TOKEN, support.TIMINGS, support.BotFactory


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print and save the suite's ack latency and time-to-image figures (only when e2e tests recorded some)."""
    if not TIMINGS.ack and not TIMINGS.time_to_image:
        return
    report = TIMINGS.report()
    try:
        where = str(TIMINGS.write())
    except OSError as exc:
        where = f"(not written: {exc})"
    terminalreporter.section("imagine-bot e2e timings")
    terminalreporter.write_line(f"ack latency (s): {json.dumps(report['ack_latency_seconds'])}")
    terminalreporter.write_line(f"time to image (s): {json.dumps(report['time_to_image_seconds'])}")
    for what, summary in report["time_to_image_by_kind"].items():
        terminalreporter.write_line(f"  {what}: {json.dumps(summary)}")
    if report["late_acks"]:
        terminalreporter.write_line(f"LATE ACKS (after the 3 s deadline): {report['late_acks']}")
    terminalreporter.write_line(f"written to {where}")


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """The ``tiny`` pipeline (deterministic weights), loaded once: each bot gets its own engine and worker."""
    from generation.loading import load_pipeline
    from generation.settings import GenerationSettings

    return load_pipeline(GenerationSettings(model="tiny", device="cpu", dtype="fp32"))


@pytest.fixture
async def discord_server(request: pytest.FixtureRequest) -> AsyncIterator[LocalDiscordServer]:
    async with LocalDiscordServer(token=E2E_TOKEN) as server:
        yield server
        support.record_acks(server, request.node.name)
        assert server.unknown_routes == [], (
            f"the bot called routes the local server does not know: {server.unknown_routes}")


@pytest.fixture
async def bots(discord_server: LocalDiscordServer, tmp_path: Path, tiny_model: Any) -> AsyncIterator[BotFactory]:
    factory = BotFactory(discord_server, tmp_path, tiny_model)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def bot(bots: BotFactory) -> RunningBot:
    return await bots.start()


@pytest.fixture
def e2e(discord_server: LocalDiscordServer, request: pytest.FixtureRequest) -> E2E:
    return E2E(discord_server, request.node.name)
