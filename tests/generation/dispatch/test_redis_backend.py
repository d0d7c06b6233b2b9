"""The Redis backend against a real ``redis-server``: the bot's GenerationWorker with a RedisRunner, and
RemoteWorkers (in this process, each with its own fake engine and pipeline thread) reading the streams.

Steered with threading.Events in the fake engine and by waiting for states (claims, heartbeats, health), never
with sleeps. A dead worker is simulated by a consumer that claims an entry and then does nothing (the real
SIGKILL is in tests/e2e/test_workers_e2e.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from generation.dispatch import wire
from generation.dispatch.redis_backend import RedisRunner, connect
from generation.dispatch.remote_worker import POISON_MESSAGE, TOO_LARGE_MESSAGE, RemoteWorker
from generation.dispatch.settings import QueueSettings
from generation.request import GenerationRequest, ImageParams
from generation.worker import (
    GenerationError,
    GenerationFailedError,
    GenerationResult,
    GenerationWorker,
    JobCancelledError,
    JobHandle,
    Placement,
    Progress,
)
from tests.helpers import SteppedEngine

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0
MODEL = "fake-model"


class FakeEngine(SteppedEngine):
    """Solid-colour images from the seed; blocks on a gate and pauses after a step on demand."""

    wait = WAIT

    def __init__(self, name: str = MODEL) -> None:
        super().__init__()
        self.model_name = name


def req(prompt: str, requester: str = "u1", *, size: int = 64, steps: int = 3, count: int = 1, seed: int = 1,
        model: str = "") -> GenerationRequest:
    return GenerationRequest(ImageParams(prompt=prompt, negative_prompt="", seed=seed, steps=steps, guidance=7.0,
                                         width=size, height=size, count=count, scheduler="euler_a", model=model),
                             requester_id=requester)


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:  # noqa: ASYNC109
    """Wait for a state (sync or async check); fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def in_thread(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT), "the fake engine never got there"


async def outcome(handle: JobHandle) -> GenerationResult | GenerationError:
    try:
        return await handle
    except GenerationError as exc:
        return exc


class Cluster:
    """The bot's worker (RedisRunner) plus remote workers, all on one Redis server."""

    def __init__(self, url: str, **queue: Any) -> None:
        self.settings = QueueSettings(backend="redis", redis_url=url, **{"lease_seconds": 3.0, "prefetch": 0,
                                                                        **queue})
        self.runner = RedisRunner(self.settings, default_model=MODEL)
        self.bot = GenerationWorker(None, queue_size=32, max_batch_size=4, runner=self.runner)
        self.remotes: dict[str, tuple[RemoteWorker, asyncio.Event, asyncio.Task[None], GenerationWorker]] = {}
        self.redis = connect(url)
        self.placements: list[tuple[str, Placement]] = []
        self.bot.add_placement_listener(lambda job_id, placement: self.placements.append((job_id, placement)))

    async def start(self) -> None:
        await self.bot.start()

    async def add_worker(self, worker_id: str, engine: FakeEngine, models: Sequence[str] = (MODEL,),
                         wait_seen: bool = True) -> RemoteWorker:
        local = GenerationWorker(engine, queue_size=1, max_batch_size=4, previews=True, preview_every=1)
        await local.start()
        remote = RemoteWorker(connect(self.settings.redis_url), self.settings, local, models=models, device="cpu",
                              max_batch=4, worker_id=worker_id)
        stop = asyncio.Event()
        self.remotes[worker_id] = (remote, stop, asyncio.create_task(remote.run(stop)), local)
        if wait_seen:
            await until(lambda: worker_id in self.runner.status()["workers"], f"the bot to see {worker_id}")
        return remote

    async def stop_worker(self, worker_id: str) -> None:
        remote, stop, task, local = self.remotes.pop(worker_id)
        stop.set()
        await task
        await local.close()
        await remote.redis.aclose()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop_worker(worker_id) for worker_id in list(self.remotes)))
        await self.bot.close()
        await self.redis.aclose()


@pytest.fixture
async def cluster(redis_server: Any) -> AsyncIterator[Cluster]:
    made = Cluster(redis_server.url)
    await made.start()
    await until(lambda: made.runner.healthy, "the runner to connect")
    try:
        yield made
    finally:
        await made.close()


async def stream_length(client: aioredis.Redis, model: str = MODEL) -> int:
    return await client.xlen(wire.Keys("imagine").batches(model))


# --- order, batching, binding late ---------------------------------------------------------------------------


async def test_remote_batches_keep_the_fair_order_and_bind_late(cluster: Cluster) -> None:
    engine = FakeEngine()
    engine.gate = threading.Event()
    await cluster.add_worker("w0", engine)
    first = cluster.bot.submit(req("z1", "z"), job_id="z1")
    await in_thread(engine.entered)
    queued = {name: cluster.bot.submit(req(name, name[0], count=2 if name == "d1" else 1), job_id=name)
              for name in ("a1", "a2", "b1", "c1", "d1")}
    # The one worker is busy: only its running batch is in Redis; these stay in the bot's queue, where they can
    # still be reordered and cancelled.
    assert await stream_length(cluster.redis) == 1
    assert cluster.bot.position("z1") == 0
    assert [cluster.bot.position(n) for n in ("a1", "b1", "c1", "d1", "a2")] == [1, 2, 3, 4, 5]
    assert queued["a2"].cancel() is True and queued["a2"].status == "cancelled"
    engine.gate.set()
    results = {name: await outcome(h) for name, h in {"z1": first, **queued}.items()}
    # Members' first jobs batched together in fair order, up to 4 images (d1 brings 2: it waits).
    assert engine.calls == [["z1"], ["a1", "b1", "c1"], ["d1"]]
    assert isinstance(results["a2"], JobCancelledError)
    for name in ("z1", "a1", "b1", "c1", "d1"):
        result = results[name]
        assert isinstance(result, GenerationResult), (name, result)
        assert result.worker_id == "w0" and result.attempt == 1 and result.model_name == MODEL
        assert all(image.png.startswith(b"\x89PNG") for image in result.images)
    assert [i.seed for i in results["d1"].images] == [1, 2]  # type: ignore[union-attr]
    claimed = {job_id for job_id, p in cluster.placements if p.worker_id == "w0" and p.attempt == 1}
    assert claimed == {"z1", "a1", "b1", "c1", "d1"}


async def test_progress_with_previews_flows_back(cluster: Cluster) -> None:
    engine = FakeEngine()
    engine.pause_after_step = 2
    await cluster.add_worker("w0", engine)
    handle = cluster.bot.submit(req("watched", steps=3))
    progress: list[Progress] = []

    async def watch() -> None:
        async for item in handle.progress():
            progress.append(item)

    watcher = asyncio.create_task(watch())
    await in_thread(engine.paused)
    await until(lambda: len(progress) >= 2, "steps 1 and 2 at the bot")
    engine.resume.set()
    await handle
    await asyncio.wait_for(watcher, WAIT)
    assert [(p.step, p.total) for p in progress[:2]] == [(1, 3), (2, 3)]
    assert all(p.preview_png and p.preview_png.startswith(b"\x89PNG") for p in progress[:2])


async def test_two_workers_run_batches_at_once_and_only_with_their_model(cluster: Cluster) -> None:
    one, two = FakeEngine("m1"), FakeEngine("m2")
    one.gate, two.gate = threading.Event(), threading.Event()
    await cluster.add_worker("w1", one, models=("m1",))
    await cluster.add_worker("w2", two, models=("m2", MODEL))
    jobs = {"x": cluster.bot.submit(req("x", "a", model="m1")), "y": cluster.bot.submit(req("y", "b", model="m2")),
            "z": cluster.bot.submit(req("z", "c"))}
    nobody = cluster.bot.submit(req("m3 job", "d", model="m3"))
    await in_thread(one.entered)
    await in_thread(two.entered)  # both workers busy at the same time
    one.gate.set()
    two.gate.set()
    results = {name: await handle for name, handle in jobs.items()}
    assert results["x"].worker_id == "w1"
    assert results["y"].worker_id == "w2" and results["z"].worker_id == "w2"
    assert one.calls == [["x"]] and sorted(map(tuple, two.calls)) == [("y",), ("z",)]
    # No worker serves m3: the job waits in the bot's queue (nothing in Redis) until one does.
    assert nobody.status == "queued" and cluster.bot.position(nobody.job_id) == 1
    assert await stream_length(cluster.redis, "m3") == 0 and cluster.bot.healthy
    late = FakeEngine("m3")
    await cluster.add_worker("w3", late, models=("m3",))
    assert (await nobody).worker_id == "w3"


# --- faults ----------------------------------------------------------------------------------------------------


async def claim_as_zombie(cluster: Cluster, consumer: str = "zombie") -> tuple[bytes, dict[str, Any]]:
    """Read the next batch entry as a consumer that then dies (never extends, never answers)."""
    keys = wire.Keys("imagine")
    stream = keys.batches(MODEL)
    await until(lambda: stream_length(cluster.redis), "a batch in Redis")
    try:
        await cluster.redis.xgroup_create(stream, wire.WORKERS_GROUP, id="0", mkstream=True)
    except aioredis.ResponseError as exc:
        assert "BUSYGROUP" in str(exc)
    response = await cluster.redis.xreadgroup(wire.WORKERS_GROUP, consumer, {stream: ">"}, count=1)
    entry_id, fields = response[0][1][0]
    payload = wire.loads(fields[b"batch"])
    await cluster.redis.xadd(keys.events, {b"type": b"claimed", b"data": wire.dumps(
        {"batch_id": payload["batch_id"], "attempt": 1, "worker_id": consumer,
         "lease_expires_at": time.time() + cluster.settings.lease_seconds})})
    return entry_id, payload


async def fake_heartbeat(cluster: Cluster, worker_id: str) -> None:
    info = wire.WorkerInfo(worker_id=worker_id, models=(MODEL,), device="cpu", max_batch=4, slots=1)
    await cluster.redis.set(wire.Keys("imagine").worker(worker_id), info.to_json(), px=3000)
    await until(lambda: worker_id in cluster.runner.status()["workers"], "the bot to see the fake worker")


async def stream_empty(cluster: Cluster) -> bool:
    return await stream_length(cluster.redis) == 0


async def events_read(cluster: Cluster) -> bool:
    return await cluster.redis.xlen(wire.Keys("imagine").events) == 0  # the bot deletes what it has handled


async def test_a_dead_workers_batch_is_reclaimed_and_its_late_copy_ignored(redis_server: Any) -> None:
    cluster = Cluster(redis_server.url, lease_seconds=1.0)
    await cluster.start()
    try:
        await until(lambda: cluster.runner.healthy, "the runner to connect")
        await fake_heartbeat(cluster, "zombie")
        handle = cluster.bot.submit(req("survivor", "a"), job_id="7")
        entry_id, payload = await claim_as_zombie(cluster)
        await until(lambda: handle.placement is not None, "the zombie's claim")
        engine = FakeEngine()
        engine.gate = threading.Event()
        await cluster.add_worker("w1", engine, wait_seen=False)
        await in_thread(engine.entered)  # reclaimed after the zombie's lease ran out
        await until(lambda: handle.placement.attempt == 2, "the bot to learn of attempt 2")
        assert handle.placement.worker_id == "w1"
        # The zombie comes back with a result of attempt 1 while attempt 2 runs: ignored.
        await cluster.redis.xadd(wire.Keys("imagine").events, {
            b"type": b"result", b"png:0": b"zombie bytes", b"data": wire.dumps({
                "batch_id": payload["batch_id"], "job_id": "7", "attempt": 1, "worker_id": "zombie",
                "images": [{"index": 0, "seed": 1, "width": 64, "height": 64}], "model_name": MODEL,
                "elapsed_seconds": 0.1, "prompt_truncated": False})})
        await until(lambda: events_read(cluster), "the bot to read the zombie's result")
        engine.gate.set()
        result = await handle
        assert result.attempt == 2 and result.worker_id == "w1"
        assert result.images[0].png.startswith(b"\x89PNG")
        assert [p.attempt for _, p in cluster.placements] == [1, 2]
    finally:
        await cluster.close()


async def test_a_poison_batch_fails_after_max_attempts_with_a_clear_message(redis_server: Any) -> None:
    cluster = Cluster(redis_server.url, lease_seconds=0.5, max_attempts=2)
    await cluster.start()
    try:
        await until(lambda: cluster.runner.healthy, "the runner to connect")
        await fake_heartbeat(cluster, "zombie")
        handle = cluster.bot.submit(req("kills every worker", "a"))
        entry_id, _ = await claim_as_zombie(cluster)
        stream = wire.Keys("imagine").batches(MODEL)
        # A second worker took it over and died too.
        await cluster.redis.xclaim(stream, wire.WORKERS_GROUP, "zombie-2", 0, [entry_id])
        engine = FakeEngine()
        await cluster.add_worker("w1", engine, wait_seen=False)
        failure = await outcome(handle)
        assert isinstance(failure, GenerationFailedError)
        assert failure.message == POISON_MESSAGE.format(attempts=2)
        assert engine.calls == []
        assert await cluster.redis.xlen(stream) == 0  # not retried again
        after = cluster.bot.submit(req("an ordinary job", "b"))
        assert (await after).worker_id == "w1"
    finally:
        await cluster.close()


async def test_cancel_reaches_a_job_running_on_a_remote_worker(cluster: Cluster) -> None:
    engine = FakeEngine()
    engine.pause_after_step = 2
    remote = await cluster.add_worker("w0", engine)
    handle = cluster.bot.submit(req("long", steps=20))
    await in_thread(engine.paused)
    assert handle.status == "running" and handle.cancel() is True
    remote_handles = await until(lambda: [h for held in remote._held.values() for h in held.handles],
                                 "the worker's copy of the job")
    await until(lambda: remote_handles[0].cancel_requested, "the cancel to reach the worker")
    engine.resume.set()
    with pytest.raises(JobCancelledError):
        await handle
    assert engine.stopped_at == 3  # stopped at the next step, not run to the end
    engine.pause_after_step = None
    assert (await cluster.bot.submit(req("next", "b"))).worker_id == "w0"


async def test_oversized_results_fail_with_a_message(redis_server: Any) -> None:
    cluster = Cluster(redis_server.url, max_result_mb=0.0001)  # about 100 bytes: no PNG fits
    await cluster.start()
    try:
        await cluster.add_worker("w0", FakeEngine())
        failure = await outcome(cluster.bot.submit(req("big")))
        assert isinstance(failure, GenerationFailedError) and failure.message == TOO_LARGE_MESSAGE
    finally:
        await cluster.close()


async def test_redis_restart_with_jobs_queued_and_running(redis_server: Any) -> None:
    cluster = Cluster(redis_server.url, lease_seconds=1.5)
    await cluster.start()
    try:
        engine = FakeEngine()
        engine.gate = threading.Event()
        await until(lambda: cluster.runner.healthy, "the runner to connect")
        await cluster.add_worker("w0", engine)
        running = cluster.bot.submit(req("in flight", "a"), job_id="1")
        await in_thread(engine.entered)
        queued = [cluster.bot.submit(req(f"queued {i}", f"m{i}"), job_id=f"q{i}") for i in range(2)]
        redis_server.stop()
        await until(lambda: not cluster.bot.healthy, "the bot to notice Redis is gone")
        assert cluster.bot.status()["healthy"] is False
        during = cluster.bot.submit(req("accepted while Redis is down", "z"), job_id="d")  # still accepted
        assert cluster.bot.position("d") == 3
        redis_server.start()  # empty: the in-flight batch and the groups are gone
        await until(lambda: cluster.bot.healthy, "the bot to reconnect")
        remote = cluster.remotes["w0"][0]
        await until(lambda: all(h.lost for h in remote._held.values()), "the worker to see its batch is gone")
        engine.gate.set()
        results = [await h for h in (running, *queued, during)]
        assert all(r.images and r.worker_id == "w0" for r in results)
        assert results[0].attempt == 2  # the batch was posted again and claimed anew
        prompts = [p for call in engine.calls for p in call]
        assert prompts.count("queued 0") == 1 and prompts.count("accepted while Redis is down") == 1
    finally:
        await cluster.close()


async def test_the_bot_starts_and_accepts_while_redis_is_down(redis_server: Any) -> None:
    redis_server.stop()
    cluster = Cluster(redis_server.url)
    await cluster.start()
    try:
        handle = cluster.bot.submit(req("patience"))
        assert not cluster.bot.healthy and cluster.bot.position(handle.job_id) == 1
        redis_server.start()
        await until(lambda: cluster.runner.healthy, "the runner to connect")
        await cluster.add_worker("w0", FakeEngine())
        assert (await handle).worker_id == "w0"
    finally:
        await cluster.close()


async def test_a_restarted_bot_drops_the_batches_of_its_earlier_session(redis_server: Any) -> None:
    old = Cluster(redis_server.url, lease_seconds=0.5)
    await old.start()
    await until(lambda: old.runner.healthy, "the old runner to connect")
    await fake_heartbeat(old, "gone")
    stale = old.bot.submit(req("from the old session"))
    await until(lambda: stream_length(old.redis), "the old batch in Redis")
    await old.close()  # gives up on it after a grace period, like a bot that stopped
    assert isinstance(await outcome(stale), JobCancelledError)
    new = Cluster(redis_server.url)
    await new.start()
    try:
        await until(lambda: new.runner.healthy, "the new runner to connect")
        engine = FakeEngine()
        await new.add_worker("w0", engine)
        fresh = await new.bot.submit(req("from the new session"))
        assert fresh.worker_id == "w0"
        assert engine.calls == [["from the new session"]]  # the journal re-dispatches; the old entry is dropped
        await until(lambda: stream_empty(new), "both entries acknowledged and deleted")
    finally:
        await new.close()
