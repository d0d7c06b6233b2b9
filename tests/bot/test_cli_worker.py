"""``imagine-bot worker``: mistakes are one clear sentence (exit 2) before any model is loaded, and a real worker
process advertises itself in Redis and leaves cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli import build_parser, main
from generation.dispatch import wire
from generation.dispatch.redis_backend import connect

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump({"generation": {"model": "tiny", "device": "cpu"}, **sections}), encoding="utf-8")
    return path


def test_the_parser_knows_the_worker_command() -> None:
    args = build_parser().parse_args(["worker", "--config", "gpu.yaml", "--device", "cuda:1"])
    assert (args.command, args.config, args.device) == ("worker", "gpu.yaml", "cuda:1")
    assert build_parser().parse_args(["worker"]).device is None


@pytest.mark.parametrize(("device", "expected"), [
    ("gpu", "--device 'gpu' is not a device; use cpu, mps, cuda or cuda:N (e.g. cuda:1)."),
    ("cuda:1", "--device cuda:1: PyTorch sees no CUDA GPU here"),
])
def test_a_device_that_cannot_be_used_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      device: str, expected: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this host has CUDA: cuda:1 may well exist")
    code = main(["worker", "--config", str(write_config(tmp_path / "c.yaml")), "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err


def test_a_bad_queue_section_is_reported_with_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "c.yaml", queue={"backend": "kafka", "lease_seconds": 0})
    assert main(["worker", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "queue.backend = 'kafka'" in err and "queue.lease_seconds = 0" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_worker_process_advertises_itself_and_leaves_on_sigterm(tmp_path: Path, redis_server: Any) -> None:
    config = write_config(tmp_path / "worker.yaml", queue={"backend": "redis", "redis_url": redis_server.url,
                                                            "lease_seconds": 5, "prefetch": 2})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "worker", "--config", str(config), "--device", "cpu",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert process.stderr is not None
    client = connect(redis_server.url)
    keys = wire.Keys("imagine")
    try:
        async with asyncio.timeout(240):
            while not (found := [k async for k in client.scan_iter(match=keys.worker_pattern)]):
                assert process.returncode is None, (await process.stderr.read()).decode()[-3000:]
                await asyncio.sleep(0.2)  # waiting for a process to import torch and build tiny
        info = wire.WorkerInfo.from_json(await client.get(found[0]))
        assert info.models == ("tiny",) and info.device == "cpu" and info.slots == 3 and info.pid == process.pid
        assert 0 < await client.pttl(found[0]) <= 5000  # expires unless refreshed: a killed worker vanishes
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            code = await process.wait()
        stderr = (await process.stderr.read()).decode(errors="replace")
        assert code == 0, stderr[-3000:]
        assert await client.exists(found[0]) == 0  # it took its heartbeat away
        assert "serving tiny on cpu via Redis" in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await client.aclose()
