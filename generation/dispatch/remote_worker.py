"""``imagine-bot worker``: one process per GPU, on any host, running the batches the bot posts to Redis.

A worker reads batches of the models it serves from their streams in one consumer group, at most
``1 + queue.prefetch`` at a time, and runs them one after the other on its pipeline thread (a
:class:`GenerationWorker` with the local runner, fed with :meth:`GenerationWorker.run_now`, so batching, OOM
splitting, previews and PNG encoding are the same code as in the bot's own process). For each batch it:

1. reports the claim (its attempt number: the journal's earlier attempts plus this entry's deliveries) and
   fails the batch instead when that exceeds ``queue.max_attempts`` (its earlier workers all died: poison);
2. runs it, publishing every step (with the preview) and stopping a job whose cancel key the bot set;
3. sends each job's result (PNG bytes, at most ``queue.max_result_mb``) or error on the events stream, then
   acknowledges and deletes the entry. A crash before the acknowledgement means another worker runs it again
   (at-least-once); the bot settles only the first result of the newest attempt.

While it holds entries it extends their lease (``XCLAIM`` of its own pending entries, atomically, in a script)
and refreshes its heartbeat; a worker killed with SIGKILL stops both, so after ``queue.lease_seconds`` another
worker takes its batches over with ``XAUTOCLAIM``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from generation.dispatch import wire
from generation.dispatch.redis_backend import CONNECTION_ERRORS, connect, pause
from generation.dispatch.settings import QueueSettings
from generation.settings import GenerationSettings
from generation.worker import (
    GenerationError,
    GenerationFailedError,
    GenerationResult,
    GenerationWorker,
    JobCancelledError,
    JobHandle,
    Progress,
)

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1000
CANCEL_POLL_SECONDS = 0.25
PROGRESS_MIN_SECONDS = 0.1  # a fast GPU makes 20+ steps a second per job; the bot edits a message every 2 s
MAX_BACKOFF_SECONDS = 5.0
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

POISON_MESSAGE = ("This job was handed to the image workers {attempts} times and each of them crashed or stopped "
                  "answering, so it was not tried again. Try other settings, or tell the bot's admin.")
TOO_LARGE_MESSAGE = ("The images are larger than a worker may send back (queue.max_result_mb); try a smaller size "
                     "or count.")
UNREADABLE_MESSAGE = ("The image worker could not read this job (the bot and the worker run different versions); "
                      "the error was logged for the bot's admin.")

# Extend the lease of the entries this consumer still owns (reset their idle time) and say which it still owns:
# an entry another worker reclaimed (we were presumed dead) or the bot deleted is not taken back.
EXTEND_LEASES = """
local kept = {}
for i = 3, #ARGV do
  local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #owned > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""


@dataclass
class _Held:
    """A batch entry this worker claimed and has not acknowledged yet."""

    stream: str
    entry_id: bytes
    batch_id: str
    attempt: int
    jobs: list[dict[str, Any]]
    handles: list[JobHandle] = field(default_factory=list)
    lost: bool = False  # another worker reclaimed it: our copy is dropped
    task: asyncio.Task[None] | None = None


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class RemoteWorker:
    """Serves batches from Redis with ``worker`` (a started local :class:`GenerationWorker`)."""

    def __init__(self, client: aioredis.Redis, settings: QueueSettings, worker: GenerationWorker, *,
                 models: Sequence[str], device: str, max_batch: int, worker_id: str | None = None) -> None:
        if not models:
            raise ValueError("a worker must serve at least one model")
        self.redis = client
        self.settings = settings
        self.worker = worker
        self.keys = wire.Keys(settings.redis_prefix)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.info = wire.WorkerInfo(worker_id=self.worker_id, models=tuple(models), device=device,
                                    max_batch=max_batch, slots=1 + settings.prefetch, host=socket.gethostname(),
                                    pid=os.getpid())
        self._held: dict[tuple[str, bytes], _Held] = {}
        self._slot_free = asyncio.Event()
        self._extend = client.register_script(EXTEND_LEASES)
        self._stopping = False
        self._stop = asyncio.Event()  # loops end at their next check (never cancelled inside a Redis command)

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.settings.lease_seconds * 1000))

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then finish the batches it holds and take its heartbeat away."""
        beat = asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat")
        reader = asyncio.create_task(self._read_loop(), name="worker-reader")
        try:
            await stop.wait()
        finally:
            self._stopping = True
            self._slot_free.set()
            await asyncio.gather(reader, return_exceptions=True)  # ends after its current read (<= 1 s)
            tasks = [h.task for h in self._held.values() if h.task is not None]
            if tasks:
                log.info("finishing %d batch(es) before stopping", len(tasks))
                await asyncio.gather(*tasks, return_exceptions=True)
            self._stop.set()
            await asyncio.gather(beat, return_exceptions=True)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.redis.delete(self.keys.worker(self.worker_id))

    # --- heartbeat and leases --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        announce = True
        while not self._stop.is_set():
            try:
                await self.redis.set(self.keys.worker(self.worker_id), self.info.to_json(), px=self._lease_ms)
                if announce:
                    await self.redis.publish(self.keys.control, f"up {self.worker_id}".encode())
                    log.info("worker %s serving %s on %s via Redis", self.worker_id, ", ".join(self.info.models),
                             self.info.device)
                    announce = False
                await self._extend_leases()
            except CONNECTION_ERRORS as exc:
                if not announce:
                    log.warning("Redis unreachable (%s); retrying", exc)
                announce = True  # say so again when it is back: the bot re-scans at once
            await pause(self._stop, interval)

    async def _extend_leases(self) -> None:
        by_stream: dict[str, list[_Held]] = {}
        for held in self._held.values():
            by_stream.setdefault(held.stream, []).append(held)
        for stream, helds in by_stream.items():
            try:
                kept = set(await self._extend(keys=[stream], args=[wire.WORKERS_GROUP, self.worker_id,
                                                                     *[h.entry_id for h in helds]]))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                kept = set()  # Redis lost its data: the bot posts these batches again
            for held in helds:
                if held.entry_id not in kept and not held.lost:
                    log.warning("batch %s was reclaimed by another worker (or withdrawn); dropping our copy",
                                held.batch_id)
                    held.lost = True
                    for handle in held.handles:
                        handle.cancel()

    # --- reading -----------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        streams = [self.keys.batches(m) for m in self.info.models]
        groups_ready = False
        delay = 0.2
        while not self._stopping:
            try:
                if not groups_ready:
                    for stream in streams:
                        await self._ensure_group(stream)
                    groups_ready = True
                self._slot_free.clear()
                free = self.info.slots - len(self._held)
                if free <= 0:
                    await self._slot_free.wait()
                    continue
                if self._stopping:
                    return
                entries = await self._reclaim(streams, free)
                if not entries:
                    response = await self.redis.xreadgroup(wire.WORKERS_GROUP, self.worker_id,
                                                           {s: ">" for s in streams}, count=free, block=READ_BLOCK_MS)
                    entries = [(_text(stream), entry_id, fields)
                               for stream, items in response or [] for entry_id, fields in items]
                for stream, entry_id, fields in entries:
                    await self._take(stream, entry_id, fields)
                delay = 0.2
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                groups_ready = False  # Redis lost its data: make the groups again
            except CONNECTION_ERRORS as exc:
                log.warning("Redis unreachable (%s); retrying in %.1f s", exc, delay)
                groups_ready = False
                await pause(self._stop, delay)  # backoff before reconnecting
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, wire.WORKERS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _reclaim(self, streams: list[str], free: int) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """Entries of dead workers (idle longer than the lease), oldest first: they waited the longest."""
        found: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        for stream in streams:
            response = await self.redis.xautoclaim(stream, wire.WORKERS_GROUP, self.worker_id,
                                                   min_idle_time=self._lease_ms, start_id="0-0", count=free)
            for entry_id, fields in response[1]:
                if fields:
                    log.warning("reclaimed batch entry %s of a worker that stopped answering", _text(entry_id))
                    found.append((stream, entry_id, fields))
            if len(found) >= free:
                break
        return found

    async def _take(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            payload = wire.loads(fields[b"batch"])
            batch_id, jobs = str(payload["batch_id"]), list(payload["jobs"])
        except (KeyError, ValueError, TypeError):
            log.error("dropping an unreadable batch entry %s", _text(entry_id))
            await self._ack(stream, entry_id)
            return
        if _text(await self.redis.get(self.keys.epoch)) != payload.get("session"):
            log.info("dropping batch %s of an earlier bot session (the bot re-dispatches from its journal)", batch_id)
            await self._ack(stream, entry_id)
            return
        pending = await self.redis.xpending_range(stream, wire.WORKERS_GROUP, min=entry_id, max=entry_id, count=1)
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        attempt = int(payload.get("base_attempt", 0)) + deliveries
        if attempt > self.settings.max_attempts:
            log.error("batch %s reached attempt %d (queue.max_attempts = %d): failing it as poison", batch_id,
                      attempt, self.settings.max_attempts)
            message = POISON_MESSAGE.format(attempts=attempt - 1)
            for job in jobs:
                await self._send("error", {"batch_id": batch_id, "job_id": job["job_id"], "attempt": attempt,
                                           "worker_id": self.worker_id, "kind": "failed", "message": message})
            await self._ack(stream, entry_id)
            return
        held = _Held(stream=stream, entry_id=entry_id, batch_id=batch_id, attempt=attempt, jobs=jobs)
        self._held[(stream, entry_id)] = held
        await self._send("claimed", {"batch_id": batch_id, "attempt": attempt, "worker_id": self.worker_id,
                                     "lease_expires_at": time.time() + self.settings.lease_seconds})
        held.task = asyncio.create_task(self._execute(held), name=f"worker-batch-{batch_id}")

    # --- running -----------------------------------------------------------------------------------------------

    async def _execute(self, held: _Held) -> None:
        try:
            outcomes = await self._run(held)
            if held.lost:
                return  # another worker runs it now; its result is the one that counts
            for job in held.jobs:
                job_id = str(job["job_id"])
                await self._retrying(lambda job_id=job_id: self._report(held, job_id, outcomes[job_id]))
            await self._retrying(lambda: self._ack(held.stream, held.entry_id))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not kill the worker; the entry is reclaimed after its lease
            log.exception("batch %s failed in the worker", held.batch_id)
        finally:
            self._held.pop((held.stream, held.entry_id), None)
            self._slot_free.set()

    async def _run(self, held: _Held) -> dict[str, GenerationResult | GenerationError]:
        """Run the batch on the pipeline thread, forwarding progress and cancels; one outcome per job id."""
        outcomes: dict[str, GenerationResult | GenerationError] = {}
        runnable = []
        for job in held.jobs:
            job_id = str(job["job_id"])
            try:
                runnable.append((f"{_text(held.entry_id)}/{job_id}", wire.request_from_dict(job["request"])))
            except (ValueError, TypeError, KeyError):
                log.exception("cannot read job %s of batch %s", job_id, held.batch_id)
                outcomes[job_id] = GenerationFailedError(UNREADABLE_MESSAGE)
        if not runnable:
            return outcomes
        held.handles = self.worker.run_now(runnable)
        # Subscribed before the batch can start (no await in between): every step is forwarded, with previews.
        forwarders = [asyncio.create_task(self._forward_progress(held, h, h.progress())) for h in held.handles]
        finished = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancels(held, finished))
        try:
            for handle in held.handles:
                try:
                    outcomes[self._job_id(handle)] = await handle
                except GenerationError as exc:
                    outcomes[self._job_id(handle)] = exc
        finally:  # both end on their own once the jobs ended: every step is sent
            finished.set()
            await asyncio.gather(*forwarders, watcher, return_exceptions=True)
        return outcomes

    @staticmethod
    def _job_id(handle: JobHandle) -> str:
        return handle.job_id.split("/", 1)[1]

    async def _apply_cancels(self, held: _Held) -> None:
        live = [h for h in held.handles if not h.done and not h.cancel_requested]
        if not live:
            return
        values = await self.redis.mget([self.keys.cancel(self._job_id(h)) for h in live])
        for handle, value in zip(live, values, strict=True):
            if value is not None:
                log.info("job %s cancelled by the bot", self._job_id(handle))
                handle.cancel()

    async def _watch_cancels(self, held: _Held, finished: asyncio.Event) -> None:
        """Poll the jobs' cancel keys while they run (cheap, and a key set while Redis was away still counts)."""
        while not finished.is_set():
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._apply_cancels(held)
            await pause(finished, CANCEL_POLL_SECONDS)

    async def _forward_progress(self, held: _Held, handle: JobHandle, progress: AsyncIterator[Progress]) -> None:
        """Publish the job's steps: every preview and the last step, others at most every PROGRESS_MIN_SECONDS."""
        last = 0.0
        async for item in progress:
            now = time.monotonic()
            if item.preview_png is None and item.step < item.total and now - last < PROGRESS_MIN_SECONDS:
                continue
            last = now
            header = {"batch_id": held.batch_id, "job_id": self._job_id(handle), "attempt": held.attempt,
                      "step": item.step, "total": item.total}
            with contextlib.suppress(*CONNECTION_ERRORS):  # progress is a nicety; results are what must arrive
                await self.redis.publish(self.keys.progress, wire.progress_message(header, item.preview_png))

    # --- reporting ---------------------------------------------------------------------------------------------

    async def _report(self, held: _Held, job_id: str, outcome: GenerationResult | GenerationError) -> None:
        base = {"batch_id": held.batch_id, "job_id": job_id, "attempt": held.attempt, "worker_id": self.worker_id}
        if isinstance(outcome, GenerationResult):
            size = sum(len(image.png) for image in outcome.images)
            if size <= self.settings.max_result_mb * 1024 * 1024:
                images = [{"index": i.index, "seed": i.seed, "width": i.width, "height": i.height}
                          for i in outcome.images]
                data = {**base, "images": images, "model_name": outcome.model_name,
                        "elapsed_seconds": outcome.elapsed_seconds, "prompt_truncated": outcome.prompt_truncated}
                await self._send("result", data, [i.png for i in outcome.images])
                return
            log.error("job %s: %d bytes of PNG exceed queue.max_result_mb", job_id, size)
            outcome = GenerationFailedError(TOO_LARGE_MESSAGE)
        kind = "cancelled" if isinstance(outcome, JobCancelledError) else "failed"
        await self._send("error", {**base, "kind": kind, "message": outcome.message})

    async def _send(self, kind: str, data: dict[str, Any], pngs: Sequence[bytes] = ()) -> None:
        fields: dict[bytes, bytes] = {b"type": kind.encode(), b"data": wire.dumps(data)}
        for index, png in enumerate(pngs):
            fields[f"png:{index}".encode()] = png
        await self.redis.xadd(self.keys.events, fields)

    async def _ack(self, stream: str, entry_id: bytes) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, wire.WORKERS_GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise  # NOGROUP: Redis lost its data, the entry with it: nothing left to acknowledge

    async def _retrying(self, action: Callable[[], Awaitable[None]]) -> None:
        """Results must arrive: retry through a Redis outage (the entry stays ours while the heartbeat runs)."""
        delay = 0.2
        while True:
            try:
                await action()
                return
            except CONNECTION_ERRORS as exc:
                if self._stopping and delay >= MAX_BACKOFF_SECONDS:
                    log.error("giving up sending to Redis while stopping (%s); the batch will be reclaimed", exc)
                    return
                await pause(self._stop, delay)  # backoff while Redis is away
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)


# --- the command -------------------------------------------------------------------------------------------------


def served_models(settings: GenerationSettings) -> list[str]:
    """The model names this worker advertises: every configured model's name (it loads them lazily)."""
    return list(settings.model_sources())


def _device_problem(device: str) -> str | None:
    """A sentence for the admin when ``--device`` cannot be used here, else None."""
    if not DEVICE.match(device):
        return f"--device {device!r} is not a device; use cpu, mps, cuda or cuda:N (e.g. cuda:1)."
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"--device {device}: PyTorch sees no CUDA GPU here (is this the CPU build of torch?)."
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return f"--device {device}: this host has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0."
    return None


async def serve(generation: GenerationSettings, queue: QueueSettings, stop: asyncio.Event) -> None:
    """Load the model, then serve batches from Redis until ``stop`` is set."""
    from generation.engine import DiffusionEngine
    from generation.loading import load_pipeline

    loaded = await asyncio.to_thread(load_pipeline, generation)
    if loaded.is_fallback:
        log.warning("model fallback: %s", loaded.banner)
    engine = await asyncio.to_thread(DiffusionEngine, loaded, generation)
    worker = GenerationWorker(engine, queue_size=1, max_batch_size=generation.max_batch_size,
                              previews=generation.previews)
    await worker.start()
    client = connect(queue.redis_url)
    try:
        remote = RemoteWorker(client, queue, worker, models=served_models(generation), device=str(loaded.device),
                              max_batch=generation.max_batch_size)
        await remote.run(stop)
    finally:
        await worker.close()
        await client.aclose()


def worker_main(generation: GenerationSettings, queue: QueueSettings, *, device: str | None = None) -> int:
    """``imagine-bot worker``: serve until SIGINT/SIGTERM (the batches it holds are finished first)."""
    from generation.loading import ModelLoadError

    if device is not None:
        problem = _device_problem(device)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        generation = generation.model_copy(update={"device": device})
    if queue.backend != "redis":
        log.warning("queue.backend is %r: the bot runs batches itself and sends none to workers; set "
                    "queue.backend: redis in the bot's config", queue.backend)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await serve(generation, queue, stop)

    try:
        asyncio.run(main())
    except ModelLoadError as exc:
        print(f"Cannot start the worker: the model could not be loaded.\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
