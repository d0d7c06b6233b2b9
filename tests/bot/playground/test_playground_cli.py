"""``imagine-bot playground`` as a newcomer runs it: the URL is printed clearly, the page answers, and Ctrl-C
(SIGINT) stops everything cleanly with exit code 0 (a real subprocess, the tiny model)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery is POSIX-only here")]

URL_LINE = re.compile(r"imagine-bot playground is running:\s+(http://127\.0\.0\.1:\d+/)")
REPO_ROOT = Path(__file__).resolve().parents[3]


def data_folders(tmp: Path) -> list[Path]:
    """The playground's per-run data folders (made with tempfile under $TMPDIR)."""
    return list(tmp.glob("imagine-playground-*"))


async def test_cli_prints_the_url_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("generation:\n  model: tiny\n  device: cpu\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env["TMPDIR"] = str(tmp_path)  # the per-run data folder lands here, so we can see it is removed
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "playground", "--config", str(config), "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=REPO_ROOT)
    assert process.stdout is not None and process.stderr is not None
    stderr_task = asyncio.create_task(process.stderr.read())
    printed: list[str] = []
    try:
        async with asyncio.timeout(90):
            while (line := (await process.stdout.readline()).decode()) and not URL_LINE.search(line):
                printed.append(line)
        match = URL_LINE.search(line)
        assert match, f"no URL printed; stdout: {''.join(printed)}; stderr: {(await stderr_task)[-2000:]!r}"
        url = match.group(1)
        async with aiohttp.ClientSession() as http, http.get(url) as page:
            assert page.status == 200 and "imagine-bot playground" in await page.text()
        assert data_folders(tmp_path), "the per-run data folder should exist while running"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(45):
                code = await process.wait()
        except TimeoutError:
            process.kill()
            raise
    stderr = (await stderr_task).decode(errors="replace")
    assert code == 0, stderr[-3000:]
    assert "Playground stopped." in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not data_folders(tmp_path), "the per-run data folder is removed at exit"
