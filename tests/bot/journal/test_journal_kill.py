"""SIGKILL the bot's process while jobs are queued and running; a new process finishes every one of them.

Real everything: SQLite file, Alembic migrations, the generation worker and the ``tiny`` diffusion model.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SCRIPT = Path(__file__).with_name("journal_kill_script.py")
REPO = Path(__file__).resolve().parents[3]
JOBS = 6


def _statuses(db: Path) -> list[str]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return [row[0] for row in conn.execute("SELECT status FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:
        return []


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def test_sigkill_while_queued_and_running_then_recover(tmp_path: Path) -> None:
    db, images = tmp_path / "data" / "imagine.db", tmp_path / "data" / "images"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "accept", str(db), str(images), str(JOBS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    try:
        line = proc.stdout.readline()
        assert line.strip() == "JOURNALLED", proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 120
        while "running" not in _statuses(db) and "done" not in _statuses(db):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    at_kill = _statuses(db)
    assert len(at_kill) == JOBS and "queued" in at_kill, at_kill  # really killed with work left

    done = subprocess.run([sys.executable, str(SCRIPT), "recover", str(db), str(images)], capture_output=True,
                          text=True, cwd=REPO, env=_env(), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"RECOVERED {sum(s in ('queued', 'running') for s in at_kill)}" in done.stdout

    with sqlite3.connect(db) as conn:
        jobs = conn.execute("SELECT id, status, seed, started_at, finished_at FROM jobs ORDER BY id").fetchall()
        assert [status for _, status, *_ in jobs] == ["done"] * JOBS
        by_start = [job_id for job_id, *_ in sorted(jobs, key=lambda j: (j[3], j[0]))]
        by_finish = [job_id for job_id, *_ in sorted(jobs, key=lambda j: (j[4], j[0]))]
        assert by_start == by_finish == [job_id for job_id, *_ in jobs]  # original order
        for job_id, _, seed, *_ in jobs:
            rows = conn.execute("SELECT idx, seed, path, sha256, size_bytes, pruned FROM "
                                "(SELECT \"index\" AS idx, seed, path, sha256, size_bytes, pruned, job_id FROM images)"
                                " WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
            assert [(idx, s) for idx, s, *_ in rows] == [(0, seed), (1, seed + 1)]
            for _, _, path, sha256, size, pruned in rows:
                data = (images / path).read_bytes()
                assert hashlib.sha256(data).hexdigest() == sha256 and len(data) == size and not pruned
                assert Image.open(io.BytesIO(data)).size == (64, 64)
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    assert len(files) == 2 * JOBS and not any(f.endswith(".tmp") for f in files)
