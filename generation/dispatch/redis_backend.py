"""The bot's side of remote generation: a :class:`~generation.worker.BatchRunner` that hands batches to worker
processes through Redis Streams and settles them from what the workers send back.

The bot keeps deciding the order (the fair queue and batching stay in :class:`GenerationWorker`); this runner
only says whether some worker has room and posts a batch when the worker asks for one (bind late):

* Workers advertise themselves (models, device, max batch, slots) with a heartbeat key that expires after
  ``queue.lease_seconds``. Room for a model = free slots of the live workers serving it, minus the batches
  already posted for them and not yet claimed.
* A batch is one entry of the model's stream (``XADD``); workers read it in one consumer group
  (``XREADGROUP``), extend their lease while it runs, and a dead worker's entry is reclaimed by another
  (``XAUTOCLAIM``). Each claim is reported with its attempt number; results and errors come back on a durable
  events stream the bot reads in its own group, progress on a pub/sub channel.
* A result is settled once: a second copy, or a copy from an attempt older than the latest claim (the slow
  worker came back), is ignored. The journal fences the SQL row by attempt as well.
* Redis unreachable: the runner reports itself unhealthy, has no room (jobs stay queued and journalled) and
  reconnects with backoff; when Redis comes back without the bot's session key (it lost its data) every
  outstanding batch is posted again with a higher attempt.

Loops that talk to Redis are stopped by a flag they check between short blocking reads (:func:`pause`), never
by cancelling them: a task cancelled inside a redis.asyncio read could stay stuck in it (seen with redis-py 8
on Python 3.11), which would hang a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from generation.dispatch import wire
from generation.dispatch.settings import QueueSettings
from generation.request import GenerationRequest
from generation.worker import (
    CANCELLED_MESSAGE,
    SHUTDOWN_MESSAGE,
    GeneratedImage,
    GenerationError,
    GenerationFailedError,
    GenerationResult,
    JobCancelledError,
    JobHandle,
    Outcomes,
    Placement,
    Progress,
)

if TYPE_CHECKING:
    from generation.worker import GenerationWorker

log = logging.getLogger(__name__)

EVENTS_BLOCK_MS = 1000
CANCEL_KEY_SECONDS = 24 * 3600
MAX_BACKOFF_SECONDS = 5.0
CLOSE_GRACE_SECONDS = 10.0
CONNECTION_ERRORS = (RedisError, OSError)


@dataclass
class _Batch:
    """A batch handed to Redis and not settled yet."""

    batch_id: str
    model: str
    jobs: dict[str, JobHandle]
    base_attempt: int
    future: asyncio.Future[Outcomes]
    outcomes: Outcomes = field(default_factory=dict)
    attempt: int = 0  # the latest claimed attempt (0: not claimed since it was last posted)
    worker_id: str | None = None  # who holds it now; None while it waits in the stream
    entry_ids: list[bytes] = field(default_factory=list)
    posted: bool = False
    posting: bool = False


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set (see the module docstring on stopping loops)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def connect(url: str) -> aioredis.Redis:
    """A client for binary payloads (PNG bytes); short timeouts so a dead server is noticed quickly."""
    return aioredis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=2.0,
                                   socket_timeout=EVENTS_BLOCK_MS / 1000 + 5.0, health_check_interval=10)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class RedisRunner:
    """Hands batches to remote workers over Redis; see the module docstring."""

    def __init__(self, settings: QueueSettings, *, default_model: str,
                 client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.default_model = default_model
        self.keys = wire.Keys(settings.redis_prefix)
        self.session = uuid.uuid4().hex
        self._client = client
        self._redis: aioredis.Redis | None = client
        self._worker: GenerationWorker | None = None
        self._workers: dict[str, wire.WorkerInfo] = {}
        self._batches: dict[str, _Batch] = {}
        self._healthy = False
        self._last_error: str | None = None
        self._reconnect = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._stop = asyncio.Event()  # set by close(): every loop ends at its next check
        self.connected = asyncio.Event()  # set while healthy (tests and start-up wait on it)
        self.launched_batches = 0  # batches formed by the fair queue and handed out (not counting re-posts)
        self.launched_jobs = 0

    # --- BatchRunner ---------------------------------------------------------------------------------------

    @property
    def parallelism(self) -> int:
        return max(1, len(self._workers))

    @property
    def healthy(self) -> bool:
        return self._healthy

    def status(self) -> dict[str, Any]:
        return {"backend": "redis", "healthy": self._healthy, "redis_url": self._safe_url(),
                "workers": {w.worker_id: {"models": list(w.models), "device": w.device, "slots": w.slots,
                                          "busy": self._busy(w.worker_id), "host": w.host, "pid": w.pid}
                            for w in self._workers.values()},
                "outstanding_batches": len(self._batches), "launched_batches": self.launched_batches,
                "launched_jobs": self.launched_jobs, "last_error": self._last_error}

    def batch_key(self, request: GenerationRequest) -> tuple | None:
        return wire.generic_batch_key(request, self.default_model)

    def batch_limit(self, request: GenerationRequest) -> int:
        model = wire.model_of(request, self.default_model)
        limits = [w.max_batch for w in self._workers.values() if model in w.models]
        return min(limits) if limits else 1

    def has_room(self, request: GenerationRequest) -> bool:
        return self._healthy and self._room(wire.model_of(request, self.default_model)) > 0

    async def start(self, worker: GenerationWorker) -> None:
        """Connect in the background: the bot starts (and accepts jobs) even while Redis is down."""
        self._worker = worker
        if self._redis is None:
            self._redis = connect(self.settings.redis_url)
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-runner")

    def launch(self, batch: list[JobHandle]) -> asyncio.Future[Outcomes]:
        loop = asyncio.get_running_loop()
        entry = _Batch(batch_id=uuid.uuid4().hex, model=wire.model_of(batch[0].request, self.default_model),
                       jobs={j.job_id: j for j in batch}, base_attempt=max(j.attempt for j in batch),
                       future=loop.create_future())
        self._batches[entry.batch_id] = entry
        self.launched_batches += 1
        self.launched_jobs += len(batch)
        self._spawn(self._post(entry))
        return entry.future

    def cancel_running(self, job: JobHandle) -> None:
        entry = self._batch_of(job)
        if entry is None:
            return
        if not entry.posted and all(j.cancel_requested for j in entry.jobs.values()):
            for job_id in entry.jobs:  # never reached a worker: nothing to stop
                entry.outcomes.setdefault(job_id, JobCancelledError(CANCELLED_MESSAGE))
            self._settle(entry)
            return
        self._spawn(self._send_cancel(job.job_id))

    async def close(self) -> None:
        """Wait a little for batches that are running on workers, then give up on them (the journal keeps them
        for the next start) and disconnect."""
        self._closing = True
        pending = [b.future for b in self._batches.values()]
        if pending:
            grace = min(self.settings.lease_seconds, CLOSE_GRACE_SECONDS)
            await asyncio.wait(pending, timeout=grace)
        for entry in list(self._batches.values()):
            for job_id in entry.jobs:
                entry.outcomes.setdefault(job_id, JobCancelledError(SHUTDOWN_MESSAGE))
            self._settle(entry)
        self._stop.set()
        if self._supervisor is not None:
            await self._supervisor
        if self._background:  # single commands (post, cancel key, delete): let them end
            await asyncio.wait(list(self._background), timeout=CLOSE_GRACE_SECONDS)
        if self._redis is not None and self._client is None:
            await self._redis.aclose()
        self._set_healthy(False)

    # --- room ------------------------------------------------------------------------------------------------

    def _busy(self, worker_id: str) -> int:
        return sum(1 for b in self._batches.values() if b.worker_id == worker_id)

    def _room(self, model: str) -> int:
        """Free slots of the live workers serving ``model`` minus the posted batches they have not claimed yet."""
        serving = [w for w in self._workers.values() if model in w.models]
        if not serving:
            return 0
        free = sum(max(0, w.slots - self._busy(w.worker_id)) for w in serving)
        models = {m for w in serving for m in w.models}
        waiting = sum(1 for b in self._batches.values() if b.worker_id is None and b.model in models)
        return free - waiting

    # --- connection ------------------------------------------------------------------------------------------

    def _safe_url(self) -> str:
        url = self.settings.redis_url
        if "@" in url:  # never show a password in a status page
            scheme, _, rest = url.partition("://")
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return url

    def _set_healthy(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            self.connected.set()
            log.info("connected to Redis at %s; %d worker(s) live", self._safe_url(), len(self._workers))
        else:
            self.connected.clear()
            self._workers = {}  # unknown while disconnected: no room for anything
        if self._worker is not None:
            self._worker.wake()

    async def _supervise(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self._setup()
                self._set_healthy(True)
                delay = 0.2
                await self._serve()
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                if self._healthy or self._last_error != str(exc):
                    log.warning("Redis unreachable at %s (%s); jobs stay queued until it is back",
                                self._safe_url(), exc)
                self._last_error = str(exc)
            except Exception as exc:  # a bug here must not stop dispatching for good
                log.exception("Redis runner error")
                self._last_error = str(exc)
            self._set_healthy(False)
            await pause(self._stop, delay)  # backoff between reconnection attempts
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def _setup(self) -> None:
        """(Re)connect: claim the session key, make the groups, learn the workers, post what was not posted."""
        r = self._require()
        await r.ping()
        epoch = await r.get(self.keys.epoch)
        lost = _text(epoch) != self.session
        await r.set(self.keys.epoch, self.session)
        await self._ensure_group(self.keys.events, wire.BOT_GROUP)
        self._reconnect.clear()
        await self._refresh_workers()
        if lost and self._batches:
            log.warning("Redis lost its data (restarted?): posting %d outstanding batch(es) again",
                        len(self._batches))
        for entry in list(self._batches.values()):
            if entry.posting or (entry.posted and not lost):
                continue
            entry.posted = False
            entry.worker_id = None
            entry.base_attempt = max(entry.base_attempt, entry.attempt)
            await self._post(entry, during_setup=True)

    async def _ensure_group(self, stream: str, group: str) -> None:
        try:
            await self._require().xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _serve(self) -> None:
        """Read events, progress and heartbeats until one of them loses the connection (or close())."""
        stop = asyncio.Event()
        loops = [asyncio.create_task(self._read_events(stop), name="redis-events"),
                 asyncio.create_task(self._read_pubsub(stop), name="redis-progress"),
                 asyncio.create_task(self._watch_workers(stop), name="redis-workers")]
        signals = [asyncio.create_task(self._reconnect.wait()), asyncio.create_task(self._stop.wait())]
        await asyncio.wait(loops + signals, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for signal in signals:
            signal.cancel()  # plain Event waits: safe to cancel
        outcomes = await asyncio.gather(*loops, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise errors[0]
        if not self._stop.is_set():
            raise ConnectionError(self._last_error or "a Redis command failed")

    def _require(self) -> aioredis.Redis:
        assert self._redis is not None, "start() first"
        return self._redis

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- workers -----------------------------------------------------------------------------------------------

    async def _watch_workers(self, stop: asyncio.Event) -> None:
        interval = min(max(self.settings.lease_seconds / 3, 0.2), 5.0)
        while not stop.is_set():
            await pause(stop, interval)  # heartbeats expire on their own; this only notices it
            if not stop.is_set():
                await self._refresh_workers()

    async def _refresh_workers(self) -> None:
        r = self._require()
        keys = [key async for key in r.scan_iter(match=self.keys.worker_pattern, count=200)]
        values = await r.mget(keys) if keys else []
        workers: dict[str, wire.WorkerInfo] = {}
        for raw in values:
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                info = wire.WorkerInfo.from_json(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring an unreadable worker heartbeat: %r", raw[:200])
                continue
            workers[info.worker_id] = info
        joined, left = set(workers) - set(self._workers), set(self._workers) - set(workers)
        for worker_id in sorted(joined):
            info = workers[worker_id]
            log.info("worker %s is up (models %s, %s, %d slot(s))", worker_id, ", ".join(info.models),
                     info.device, info.slots)
        for worker_id in sorted(left):
            log.warning("worker %s stopped sending heartbeats", worker_id)
        self._workers = workers
        if self._worker is not None and (joined or left):
            self._worker.wake()

    # --- posting and cancelling --------------------------------------------------------------------------------

    def _payload(self, entry: _Batch) -> bytes:
        jobs = [{"job_id": job_id, "request": wire.request_to_dict(job.request)} for job_id, job in entry.jobs.items()]
        return wire.dumps({"session": self.session, "batch_id": entry.batch_id, "base_attempt": entry.base_attempt,
                           "model": entry.model, "jobs": jobs})

    async def _post(self, entry: _Batch, *, during_setup: bool = False) -> None:
        """XADD the batch; while Redis is down it waits in memory and :meth:`_setup` posts it later."""
        if entry.posted or entry.posting or entry.future.done() or not (self._healthy or during_setup):
            return
        entry.posting = True
        try:
            entry_id = await self._require().xadd(self.keys.batches(entry.model), {b"batch": self._payload(entry)})
        except CONNECTION_ERRORS as exc:
            self._last_error = str(exc)
            if during_setup:
                raise
            self._reconnect.set()  # the supervisor reconnects and posts it again
            return
        finally:
            entry.posting = False
        entry.entry_ids.append(entry_id)
        entry.posted = True

    async def _send_cancel(self, job_id: str) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):  # the bot drops the output anyway
            await self._require().set(self.keys.cancel(job_id), b"1", ex=CANCEL_KEY_SECONDS)

    def _batch_of(self, job: JobHandle) -> _Batch | None:
        return next((b for b in self._batches.values() if job.job_id in b.jobs and b.jobs[job.job_id] is job), None)

    # --- events from the workers ---------------------------------------------------------------------------------

    async def _read_events(self, stop: asyncio.Event) -> None:
        r = self._require()
        while not stop.is_set():
            response = await r.xreadgroup(wire.BOT_GROUP, "bot", {self.keys.events: ">"}, count=64,
                                          block=EVENTS_BLOCK_MS)
            ids = []
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    ids.append(entry_id)
                    try:
                        self._on_event(fields)
                    except Exception:  # one bad event must not stop the others
                        log.exception("could not handle a worker event")
            if ids:
                async with r.pipeline(transaction=True) as pipe:
                    pipe.xack(self.keys.events, wire.BOT_GROUP, *ids)
                    pipe.xdel(self.keys.events, *ids)
                    await pipe.execute()

    def _on_event(self, fields: dict[bytes, bytes]) -> None:
        kind = _text(fields.get(b"type"))
        data = wire.loads(fields[b"data"])
        entry = self._batches.get(str(data.get("batch_id")))
        if entry is None:
            log.debug("event %s for a batch this process does not wait for (settled, or an earlier session)", kind)
            return
        attempt = int(data.get("attempt", 0))
        if attempt < entry.attempt:
            log.info("ignoring a %s of batch %s from attempt %d: attempt %d has claimed it since", kind,
                     entry.batch_id, attempt, entry.attempt)
            return
        if kind == "claimed":
            self._on_claimed(entry, attempt, str(data["worker_id"]), float(data["lease_expires_at"]))
        elif kind in ("result", "error"):
            job_id = str(data["job_id"])
            if job_id not in entry.jobs:
                return
            if job_id in entry.outcomes:
                log.info("ignoring a second %s of job %s (attempt %d)", kind, job_id, attempt)
                return
            entry.outcomes[job_id] = self._result(entry.jobs[job_id], data, fields) if kind == "result" \
                else self._error(data)
            if len(entry.outcomes) == len(entry.jobs):
                self._settle(entry)
        else:
            log.warning("unknown worker event %r", kind)

    def _on_claimed(self, entry: _Batch, attempt: int, worker_id: str, lease_expires_at: float) -> None:
        if entry.worker_id is not None and entry.worker_id != worker_id:
            log.warning("batch %s reclaimed by %s (attempt %d) from %s", entry.batch_id, worker_id, attempt,
                        entry.worker_id)
        entry.attempt, entry.worker_id = attempt, worker_id
        placement = Placement(attempt=attempt, worker_id=worker_id, lease_expires_at=lease_expires_at)
        for job in entry.jobs.values():
            job._place(placement)
        if self._worker is not None:
            self._worker.wake()

    @staticmethod
    def _result(job: JobHandle, data: dict[str, Any], fields: dict[bytes, bytes]) -> GenerationResult:
        images = [GeneratedImage(index=int(i["index"]), seed=int(i["seed"]), png=fields[f"png:{n}".encode()],
                                 width=int(i["width"]), height=int(i["height"]))
                  for n, i in enumerate(data["images"])]
        return GenerationResult(job_id=job.job_id, request=job.request, images=images,
                                model_name=str(data["model_name"]), elapsed_seconds=float(data["elapsed_seconds"]),
                                prompt_truncated=bool(data["prompt_truncated"]), attempt=int(data["attempt"]),
                                worker_id=str(data["worker_id"]))

    @staticmethod
    def _error(data: dict[str, Any]) -> GenerationError:
        if data.get("kind") == "cancelled":
            return JobCancelledError(CANCELLED_MESSAGE)
        return GenerationFailedError(str(data.get("message") or "The image generator failed."))

    def _settle(self, entry: _Batch) -> None:
        self._batches.pop(entry.batch_id, None)
        if not entry.future.done():
            entry.future.set_result(dict(entry.outcomes))
        if entry.entry_ids and self._healthy and not self._closing:  # copies posted again need not run
            self._spawn(self._forget(entry))
        if self._worker is not None:
            self._worker.wake()

    async def _forget(self, entry: _Batch) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self._require().xdel(self.keys.batches(entry.model), *entry.entry_ids)

    async def _read_pubsub(self, stop: asyncio.Event) -> None:
        pubsub = self._require().pubsub()
        try:
            await pubsub.subscribe(self.keys.progress, self.keys.control)
            progress, control = self.keys.progress.encode(), self.keys.control.encode()
            while not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                if message["channel"] == control:
                    await self._refresh_workers()
                elif message["channel"] == progress:
                    self._on_progress(message["data"])
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await pubsub.aclose()

    def _on_progress(self, raw: bytes) -> None:
        try:
            header, preview = wire.parse_progress_message(raw)
        except ValueError:
            return
        entry = self._batches.get(str(header.get("batch_id")))
        if entry is None or int(header.get("attempt", 0)) < entry.attempt:
            return
        job = entry.jobs.get(str(header.get("job_id")))
        if job is not None and str(header.get("job_id")) not in entry.outcomes:
            job._push_progress(Progress(step=int(header["step"]), total=int(header["total"]), preview_png=preview))

