"""The bot with ``queue.backend: redis`` and REAL worker processes (``python -m bot.cli worker --config ...``, model
``tiny``) on a real ``redis-server``, through the local Discord-compatible server:

* 16 jobs from 8 members: each delivered exactly once, both workers used, batches formed across members;
* SIGKILL of a worker in the middle of a batch: another worker finishes it after the lease, nothing is lost or
  posted twice;
* /cancel of a job running on a worker: the worker stops it, the member gets no image;
* Redis restarted (losing everything) with jobs queued and running: every job is still delivered once.

The bot process itself loads no model here (the workers do). Waits are on events (messages, rows, Redis
messages), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import E2E, BotFactory, eventually, is_result_for

from bot.bootstrap import RunningBot
from bot.localdiscord import LocalDiscordServer, Member
from bot.storage import repository
from generation.dispatch import wire
from generation.dispatch.redis_backend import connect

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
WORKER_START = 180.0  # a worker process imports torch and builds tiny: slow on a busy two-core machine
JOB_WAIT = 300.0
LONG = {"steps": 24, "width": 128, "height": 128}  # keeps a worker busy for a second or more on CPU


class Workers:
    """Worker processes started from the same config as the bot (``imagine-bot worker``)."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        self.directory = directory
        self.config_path = directory / "worker.yaml"
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> None:
        # One torch thread each: two workers on a two-core machine would otherwise fight over the cores.
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        for _ in range(count):
            log = (self.directory / f"worker-{len(self.processes)}.log").open("wb")
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "worker", "--config", str(self.config_path)],
                cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()

    def freeze(self) -> None:
        """SIGSTOP: the workers stay registered but take and finish nothing until :meth:`resume`."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.directory.glob("worker-*.log")))

    async def stop(self) -> None:
        """SIGTERM (a worker finishes what it holds), then SIGKILL after a while: this is teardown."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


def redis_settings(url: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": url, "lease_seconds": 3.0, "prefetch": 0, **extra}


@pytest.fixture
def worker_dir(tmp_path: Path) -> Path:
    return tmp_path / "workers"


async def start_remote(bots: BotFactory, redis_url: str, directory: Path,
                       **queue: Any) -> tuple[RunningBot, Workers]:
    """A bot on the redis backend (no model in its process) and a Workers launcher with the same config."""
    sections: dict[str, Any] = {"queue": redis_settings(redis_url, **queue),
                                "rate_limits": {"images_per_window": 100, "max_queued_per_user": 3},
                                "generation": {"max_batch_size": 4}}
    config = bots.config(**sections)
    running = await bots.start(bots.settings(**sections))
    assert running.services.engine is None and running.services.model.device == "remote"
    return running, Workers(config, directory)


@pytest.fixture
async def remote(bots: BotFactory, redis_server: Any, worker_dir: Path) -> AsyncIterator[tuple[RunningBot, Workers]]:
    """A short lease (3 s): a killed worker's batch is taken over quickly."""
    running, workers = await start_remote(bots, redis_server.url, worker_dir)
    try:
        yield running, workers
    finally:
        await workers.stop()


@pytest.fixture
async def patient_remote(bots: BotFactory, redis_server: Any,
                         worker_dir: Path) -> AsyncIterator[tuple[RunningBot, Workers]]:
    """A long lease (60 s): a worker frozen for a while (SIGSTOP) still counts as alive and keeps its entries."""
    running, workers = await start_remote(bots, redis_server.url, worker_dir, lease_seconds=60.0)
    try:
        yield running, workers
    finally:
        workers.resume()
        await workers.stop()


async def live_workers(running: RunningBot, count: int, workers: Workers) -> dict[str, Any]:
    status = running.services.worker.status
    try:
        await eventually(lambda: len(status()["workers"]) >= count, f"{count} worker(s) up", WORKER_START, 0.2)
    except AssertionError:
        raise AssertionError(f"workers did not come up; their logs:\n{workers.logs()[-4000:]}") from None
    return status()["workers"]


def members(server: LocalDiscordServer, count: int, prefix: str) -> list[Member]:
    return [server.add_member(server.guild, f"{prefix}{i}") for i in range(count)]


async def results_of(server: LocalDiscordServer, member: Member) -> list[Any]:
    return [m for m in server.bot_messages() if is_result_for(member)(m)]


async def all_done(running: RunningBot, job_ids: list[int]) -> bool:
    jobs = [await repository.get_job(running.services.db, job_id) for job_id in job_ids]
    return all(job is not None and job.status in ("done", "failed", "cancelled") for job in jobs)


async def job_ids_of(running: RunningBot, server: LocalDiscordServer, people: list[Member], each: int) -> list[int]:
    async def journalled() -> list[int] | None:
        ids = [job.id for member in people
               for job in await repository.jobs_for_user(running.services.db, server.guild.id, member.id)]
        return ids if len(ids) == each * len(people) else None

    return await eventually(journalled, "every job journalled", 30)


async def delivered_once(running: RunningBot, server: LocalDiscordServer, people: list[Member],
                         job_ids: list[int]) -> None:
    await eventually(lambda: all_done(running, job_ids), "every job finished", JOB_WAIT, 0.2)
    await running.services.journal.wait_idle()
    for job_id in job_ids:
        job = await repository.get_job(running.services.db, job_id)
        assert job is not None and job.status == "done", (job_id, job and job.status, job and job.error)
    posted = [m for m in server.bot_messages() if any(is_result_for(p)(m) for p in people)]
    assert len(posted) == len(job_ids), f"{len(posted)} result messages for {len(job_ids)} jobs"
    assert len({(await E2E.job_of(running, m)).id for m in posted}) == len(job_ids)  # one message per job


async def test_sixteen_jobs_from_eight_members_on_two_workers(patient_remote: tuple[RunningBot, Workers],
                                                             discord_server: LocalDiscordServer) -> None:
    running, workers = patient_remote
    server = discord_server
    workers.start(2)
    await live_workers(running, 2, workers)
    status = running.services.worker.status
    people = members(server, 8, "artist")
    # Both workers are frozen, so nothing finishes while the jobs arrive, however slow this machine is. Two jobs
    # of different sizes (they cannot share a batch) take the two slots...
    workers.freeze()
    first = await asyncio.gather(*(server.send_command(p, server.general, "imagine",
                                                        {"prompt": f"a long one {i}", **LONG, "width": 128 - 8 * i})
                                   for i, p in enumerate(people[:2])))
    await eventually(lambda: status()["launched_batches"] == 2, "both first jobs handed to the workers", 30)
    # ...and the other 14 queue up in the bot: fair order and batching across members decide what runs next.
    rest = [(p, f"prompt {i} of {p.name}") for i in range(2) for p in people if not (i == 0 and p in people[:2])]
    sent = await asyncio.gather(*(server.send_command(p, server.general, "imagine", {"prompt": prompt})
                                  for p, prompt in rest))
    job_ids = await job_ids_of(running, server, people, 2)
    for interaction in (*first, *sent):
        await interaction.wait_for_ack(timeout=10)
    await eventually(lambda: status()["queued"] == 14, "the other 14 jobs waiting in the bot's fair queue", 30)
    assert status()["launched_batches"] == 2, status()  # no room: nothing else was handed out
    workers.resume()
    await delivered_once(running, server, people, job_ids)
    jobs = [await repository.get_job(running.services.db, job_id) for job_id in job_ids]
    used = {job.worker_id for job in jobs}
    assert len(used) == 2 and None not in used, f"workers used: {used}"
    assert status()["launched_jobs"] == 16 and status()["launched_batches"] == 2 + 4, status()  # 14 -> 4,4,4,2
    for person in people:
        assert len(await results_of(server, person)) == 2


async def first_progress(url: str) -> dict[str, Any]:
    """The header of the next step a worker publishes (the batch is running on its pipeline now)."""
    client = connect(url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(wire.Keys("imagine").progress)
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                return wire.parse_progress_message(message["data"])[0]
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_sigkill_of_a_worker_mid_batch_loses_and_duplicates_nothing(
        remote: tuple[RunningBot, Workers], discord_server: LocalDiscordServer, redis_server: Any) -> None:
    running, workers = remote
    server = discord_server
    workers.start(2)
    live = await live_workers(running, 2, workers)
    people = members(server, 4, "victim")
    progress = asyncio.create_task(first_progress(redis_server.url))
    await asyncio.sleep(0)
    await asyncio.gather(*(server.send_command(p, server.general, "imagine",
                                               {"prompt": f"kill test {i}", **LONG, "width": 128 + 8 * (i % 2)})
                           for i, p in enumerate(people)))
    job_ids = await job_ids_of(running, server, people, 1)
    header = await asyncio.wait_for(progress, JOB_WAIT)
    victim_job = int(header["job_id"])

    async def claimed_by() -> str | None:
        job = await repository.get_job(running.services.db, victim_job)
        return job.worker_id if job is not None else None

    victim = await eventually(claimed_by, "the claim recorded", 30)
    assert victim in live and live[victim]["pid"] in {p.pid for p in workers.processes}
    os.kill(live[victim]["pid"], signal.SIGKILL)
    await delivered_once(running, server, people, job_ids)
    job = await repository.get_job(running.services.db, victim_job)
    assert job.attempt == 2 and job.worker_id != victim, (job.attempt, job.worker_id, victim)


async def test_cancel_reaches_a_job_running_on_a_worker(remote: tuple[RunningBot, Workers],
                                                       discord_server: LocalDiscordServer,
                                                       redis_server: Any) -> None:
    running, workers = remote
    server = discord_server
    workers.start(1)
    await live_workers(running, 1, workers)
    [member] = members(server, 1, "canceller")
    progress = asyncio.create_task(first_progress(redis_server.url))
    await asyncio.sleep(0)
    await server.send_command(member, server.general, "imagine", {"prompt": "never mind", **LONG, "steps": 30})
    [job_id] = await job_ids_of(running, server, [member], 1)
    header = await asyncio.wait_for(progress, JOB_WAIT)
    assert int(header["job_id"]) == job_id and header["step"] < header["total"]
    cancel = await server.send_command(member, server.general, "cancel", {"job_id": job_id})
    await cancel.wait_for_ack(timeout=10)
    await E2E.job_with_status(running, job_id, "cancelled", timeout=60)
    await eventually(lambda: "cancelled by the bot" in workers.logs(), "the worker to stop the job", 60)
    after = await server.send_command(member, server.general, "imagine", {"prompt": "this one please"})
    await after.wait_for_ack(timeout=10)
    result = await server.wait_for_message(is_result_for(member), timeout=JOB_WAIT, include_existing=True)
    assert (await E2E.job_of(running, result)).params.prompt == "this one please"
    assert len(await results_of(server, member)) == 1  # no image for the cancelled job


async def test_redis_restart_with_jobs_queued(remote: tuple[RunningBot, Workers], discord_server: LocalDiscordServer,
                                              redis_server: Any) -> None:
    running, workers = remote
    server = discord_server
    workers.start(1)
    await live_workers(running, 1, workers)
    people = members(server, 4, "patient")
    await asyncio.gather(*(server.send_command(p, server.general, "imagine",
                                               {"prompt": f"restart {i}", "steps": 12, "width": 128, "height": 128})
                           for i, p in enumerate(people)))
    job_ids = await job_ids_of(running, server, people, 1)
    await eventually(lambda: any_claimed(running, job_ids), "a batch on the worker", JOB_WAIT)
    redis_server.stop()  # no persistence: streams, groups, heartbeats and the session key are gone
    await eventually(lambda: not running.services.worker.healthy, "the bot to notice", 30)
    during = await server.send_command(people[0], server.general, "imagine", {"prompt": "sent while Redis is down"})
    await during.wait_for_ack(timeout=10)  # still accepted and journalled
    later = await eventually(lambda: job_with_prompt(running, server, people[0], "sent while Redis is down"),
                             "the job sent while Redis was down journalled", 30)
    redis_server.start()
    await eventually(lambda: running.services.worker.healthy, "the bot to reconnect", 60)
    await delivered_once(running, server, people, [*job_ids, later])


async def job_with_prompt(running: RunningBot, server: LocalDiscordServer, member: Member, prompt: str) -> int | None:
    jobs = await repository.jobs_for_user(running.services.db, server.guild.id, member.id)
    return next((job.id for job in jobs if job.params.prompt == prompt), None)


async def any_claimed(running: RunningBot, job_ids: list[int]) -> bool:
    jobs = [await repository.get_job(running.services.db, job_id) for job_id in job_ids]
    return any(job is not None and job.worker_id is not None for job in jobs)
