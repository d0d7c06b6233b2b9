"""The generation worker: a bounded, fair queue in front of ONE pipeline thread, with cross-member batching.

Why it is shaped like this:

* The diffusion pipeline is synchronous and slow, so it runs on a single dedicated thread; the event loop only
  does bookkeeping (queue, fairness, futures) and is never blocked. Steps and results come back with
  ``loop.call_soon_threadsafe`` or through the executor's future.
* Members are served round-robin (the requester served longest ago goes next), so one member's four jobs
  cannot starve the next member.
* Requests whose ``engine.batch_key`` match are run in one pipeline call (up to ``max_batch_size`` images),
  which is much cheaper per image on a GPU.
* A GPU out-of-memory error splits the batch in halves and retries; any other error fails only that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from generation.errors import JobRefusedError
from generation.png import encode_png, parameters_text
from generation.request import GenerationRequest, ImageParams

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]

OOM_MESSAGE = "Not enough GPU memory for this job; try a smaller size or count."
FAILED_MESSAGE = "Something went wrong while generating this image; the error was logged for the bot's admin."
CANCELLED_MESSAGE = "This job was cancelled."
SHUTDOWN_MESSAGE = "The image generator is shutting down. Please try again in a few minutes."
PROGRESS_BUFFER = 16  # progress events kept per slow consumer; older ones are dropped
PREVIEW_MAX_SIDE = 128  # previews are small thumbnails: cheap to encode and to upload


class BatchEngine(Protocol):
    """What the worker needs from :class:`generation.engine.DiffusionEngine` (tests pass a fake)."""

    def batch_key(self, request: GenerationRequest) -> tuple: ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Any]]: ...

    def is_out_of_memory(self, exc: BaseException) -> bool: ...

    def free_memory(self) -> None: ...

    def tokens_truncated(self, params: ImageParams) -> bool: ...

    def model_label(self, params: ImageParams) -> str: ...


@dataclass(frozen=True)
class Progress:
    """Step ``step`` of ``total`` finished; ``preview_png`` is a small preview of the first image, sometimes.

    Steps are counted as diffusers' progress bar counts them: ``total`` is the steps the sampler really runs
    (``params.denoising_steps``: the requested steps, fewer for img2img), whatever the sampler's order.
    Steps restart from 1 if the batch is retried after an out-of-memory split.
    """

    step: int
    total: int
    preview_png: bytes | None = None


@dataclass(frozen=True)
class GeneratedImage:
    index: int
    seed: int
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class GenerationResult:
    job_id: str
    request: GenerationRequest
    images: list[GeneratedImage]
    model_name: str
    elapsed_seconds: float
    prompt_truncated: bool


class GenerationError(Exception):
    """Base of the worker's errors; ``message`` (and ``str(exc)``) can be shown to a member as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFullError(GenerationError):
    """The queue holds ``queue_size`` jobs (or the worker is closing); the member should retry later."""


class JobCancelledError(GenerationError):
    """The job was cancelled before it produced images."""


class GenerationFailedError(GenerationError):
    """The engine failed for this job (out of memory alone, or an unexpected error that was logged)."""


class _Subscriber:
    """One ``progress()`` consumer: a bounded buffer so a slow reader only loses old steps, never blocks."""

    def __init__(self) -> None:
        self.items: deque[Progress] = deque(maxlen=PROGRESS_BUFFER)
        self.event = asyncio.Event()
        self.closed = False

    def push(self, item: Progress) -> None:
        self.items.append(item)
        self.event.set()

    def close(self) -> None:
        self.closed = True
        self.event.set()


class JobHandle:
    """The submitter's view of one job: await it for the result, iterate ``progress()``, or ``cancel()``."""

    def __init__(self, worker: GenerationWorker, job_id: str, request: GenerationRequest, seq: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self.request = request
        self._worker = worker
        self._seq = seq
        self._status: JobStatus = "queued"
        self._future: asyncio.Future[GenerationResult] = loop.create_future()
        # Mark the outcome retrieved so an un-awaited cancelled/failed job does not log "never retrieved".
        self._future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._subscribers: list[_Subscriber] = []
        self._latest: Progress | None = None
        # Read by the pipeline thread in should_stop; a plain bool is safe to share under the GIL.
        self.cancel_requested = False

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id} {self._status} requester={self.request.requester_id}>"

    @property
    def params(self) -> ImageParams:
        return self.request.params

    def __await__(self) -> Generator[Any, None, GenerationResult]:
        return asyncio.shield(self._future).__await__()

    @property
    def status(self) -> JobStatus:
        return self._status

    @property
    def done(self) -> bool:
        return self._future.done()

    @property
    def wants_preview(self) -> bool:
        """Only spend time on previews when someone is listening."""
        return bool(self._subscribers)

    def cancel(self) -> bool:
        """Queued: removed at once. Running: stopped at the next step (or its output dropped). False if finished."""
        return self._worker._cancel(self)

    async def progress(self) -> AsyncIterator[Progress]:
        """Progress events in order (old ones dropped for a slow reader); ends when the job ends."""
        if self._future.done():
            return
        sub = _Subscriber()
        if self._latest is not None:
            sub.push(self._latest)
        self._subscribers.append(sub)
        try:
            while True:
                while sub.items:
                    yield sub.items.popleft()
                if sub.closed:
                    return
                await sub.event.wait()
                sub.event.clear()
        finally:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    # --- called on the loop by the worker -------------------------------------------------------------------

    def _push_progress(self, item: Progress) -> None:
        if self._future.done():
            return
        self._latest = item
        for sub in list(self._subscribers):
            sub.push(item)

    def _finish(self, status: JobStatus, result: GenerationResult | None = None,
                error: GenerationError | None = None) -> None:
        if self._future.done():
            return
        self._status = status
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)  # type: ignore[arg-type]
        for sub in self._subscribers:
            sub.close()


@dataclass
class _Running:
    """The batch on the pipeline thread now, with its live step (read by estimate_seconds)."""

    jobs: list[JobHandle]
    step: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)


def _cost(request: GenerationRequest) -> float:
    """Work units of a request: images x denoising steps (the unit progress reports), scaled to 512x512 pixels
    (time per step grows with pixels)."""
    params = request.params
    return params.count * params.denoising_steps * (params.width * params.height) / (512 * 512)


def _encode_preview(image: Any) -> bytes:
    image = image.copy()
    image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


class GenerationWorker:
    """Fair, bounded queue + one pipeline thread; see the module docstring and docs/ARCHITECTURE.md."""

    def __init__(self, engine: BatchEngine, *, queue_size: int, max_batch_size: int, previews: bool = True,
                 preview_every: int = 5, executor: ThreadPoolExecutor | None = None) -> None:
        """``executor``: a single-thread executor to run the pipeline on, for callers that run other torch work
        in the process (a benchmark's baseline): on CPU, torch calls alternating between two threads slow each
        other down about 2x, so all of them should share one thread. The worker does not shut it down."""
        if executor is not None and executor._max_workers != 1:
            raise ValueError("the pipeline executor must have exactly one thread")
        if queue_size < 1 or max_batch_size < 1:
            raise ValueError("queue_size and max_batch_size must be at least 1")
        self.engine = engine
        self.queue_size = queue_size
        self.max_batch_size = max_batch_size
        self.previews = previews
        self.preview_every = max(1, preview_every)
        self._queues: dict[str, deque[JobHandle]] = {}  # requester -> their queued jobs, FIFO
        self._last_served: dict[str, int] = {}  # requester -> serve tick; lower = served longer ago
        self._serve_ticks = itertools.count(1)
        self._seqs = itertools.count()
        self._jobs: dict[str, JobHandle] = {}  # queued or running
        self._running: _Running | None = None
        self._seconds_per_unit: float | None = None  # moving average of seconds per _cost unit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = executor
        self._owns_executor = executor is None
        self._dispatcher: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._closing = False

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the dedicated pipeline thread and the loop-side dispatcher."""
        if self._dispatcher is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._wakeup = asyncio.Event()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="generation-dispatcher")
        if self._queues:
            self._wakeup.set()

    async def close(self) -> None:
        """Cancel what is queued, let the running batch finish, then stop the thread (joined off the loop)."""
        self._closing = True
        for job in [j for q in self._queues.values() for j in q]:
            self._cancel(job)
        if self._wakeup is not None:
            self._wakeup.set()
        if self._dispatcher is not None:
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._executor is not None and self._owns_executor:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None

    # --- submitting and asking ----------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, job_id: str | None = None) -> JobHandle:
        """Queue a job; never blocks. Raises :class:`QueueFullError` with a message for the member."""
        if self._closing:
            raise QueueFullError(SHUTDOWN_MESSAGE)
        queued = self.queued_count
        if queued >= self.queue_size:
            waiting = f"{queued} job{'s' if queued != 1 else ''} waiting"
            raise QueueFullError(f"The queue is full ({waiting}). Please try again in a few minutes.")
        job_id = job_id or uuid.uuid4().hex
        if job_id in self._jobs:
            raise ValueError(f"job id {job_id!r} is already queued or running")
        loop = self._loop or asyncio.get_running_loop()
        handle = JobHandle(self, job_id, request, next(self._seqs), loop)
        self._queues.setdefault(request.requester_id, deque()).append(handle)
        self._jobs[job_id] = handle
        if self._wakeup is not None:
            self._wakeup.set()
        return handle

    @property
    def queued_count(self) -> int:
        """Jobs waiting (not running)."""
        return sum(len(q) for q in self._queues.values())

    def jobs_of(self, requester_id: str) -> list[str]:
        """Job ids queued or running for that requester, running first."""
        running = [j.job_id for j in self._running.jobs if j.request.requester_id == requester_id] \
            if self._running else []
        return running + [j.job_id for j in self._queues.get(requester_id, ())]

    def position(self, job_id: str) -> int | None:
        """0 = running now, 1 = next, ...; None when unknown or finished."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status == "running":
            return 0
        order = self._projected_order()
        return order.index(job) + 1 if job in order else None

    def estimate_seconds(self, job_id: str) -> float | None:
        """Seconds until ``job_id`` finishes: the moving average cost times the work ahead of it and its own."""
        job = self._jobs.get(job_id)
        if job is None or self._seconds_per_unit is None:
            return None
        units = 0.0
        if self._running is not None:
            batch_units = sum(_cost(j.request) for j in self._running.jobs)
            done = self._running.step / self._running.total if self._running.total else 0.0
            units += batch_units * (1.0 - min(done, 1.0))
        if job.status != "running":
            for ahead in self._projected_order():
                units += _cost(ahead.request)
                if ahead is job:
                    break
        return units * self._seconds_per_unit

    # --- fairness and batching (loop thread only) ------------------------------------------------------------

    def _fair_requesters(self, queues: dict[str, deque[JobHandle]], last_served: dict[str, int]) -> list[str]:
        """Requesters with queued jobs, served-longest-ago first (never served = first; ties by arrival)."""
        return sorted((r for r, q in queues.items() if q), key=lambda r: (last_served.get(r, 0), queues[r][0]._seq))

    def _projected_order(self) -> list[JobHandle]:
        """The order queued jobs would start in, ignoring batching (good enough for positions and estimates)."""
        queues = {r: deque(q) for r, q in self._queues.items() if q}
        last = dict(self._last_served)
        tick = max(last.values(), default=0)
        order: list[JobHandle] = []
        while queues:
            requester = self._fair_requesters(queues, last)[0]
            order.append(queues[requester].popleft())
            if not queues[requester]:
                del queues[requester]
            tick += 1
            last[requester] = tick
        return order

    def _take_batch(self) -> list[JobHandle]:
        """Pop the next fair job plus compatible heads of other requesters' queues, up to max_batch_size images."""
        requesters = self._fair_requesters(self._queues, self._last_served)
        if not requesters:
            return []
        first = self._queues[requesters[0]][0]
        key = self._batch_key(first.request)
        batch = [first]
        images = first.params.count
        for requester in requesters[1:]:
            head = self._queues[requester][0]
            if images + head.params.count > self.max_batch_size:
                continue
            if key is not None and self._batch_key(head.request) == key:
                batch.append(head)
                images += head.params.count
        for job in batch:
            requester = job.request.requester_id
            self._queues[requester].popleft()
            if not self._queues[requester]:
                del self._queues[requester]
            self._last_served[requester] = next(self._serve_ticks)
            job._status = "running"
        self._forget_idle_requesters()
        return batch

    def _batch_key(self, request: GenerationRequest) -> tuple | None:
        try:
            return self.engine.batch_key(request)
        except Exception:  # a bad key must not stop the queue: that job simply runs alone
            log.exception("engine.batch_key failed; running the job alone")
            return None

    def _forget_idle_requesters(self, keep: int = 10_000) -> None:
        """Bound the fairness memory: drop the oldest ticks of requesters with nothing queued."""
        if len(self._last_served) <= keep:
            return
        idle = sorted((t, r) for r, t in self._last_served.items() if r not in self._queues)
        for _, requester in idle[: len(self._last_served) - keep]:
            del self._last_served[requester]

    def _cancel(self, job: JobHandle) -> bool:
        if job.done:
            return False
        if job.status == "queued":
            queue = self._queues.get(job.request.requester_id)
            if queue is not None and job in queue:
                queue.remove(job)
                if not queue:
                    del self._queues[job.request.requester_id]
            self._jobs.pop(job.job_id, None)
            job._finish("cancelled", error=JobCancelledError(CANCELLED_MESSAGE))
            return True
        job.cancel_requested = True  # running: the pipeline thread sees it at the next step
        return True

    # --- the dispatcher (loop) and the batch runner (pipeline thread) --------------------------------------------

    async def _dispatch(self) -> None:
        """Loop side: pick the next fair batch, run it on the pipeline thread, settle its jobs; repeat."""
        assert self._wakeup is not None
        while True:
            if not self._queues:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            try:
                await self._run_next_batch()
            except Exception:  # a worker bug must not stop the queue for everyone
                log.exception("generation dispatcher error")

    async def _run_next_batch(self) -> None:
        assert self._loop is not None
        batch = self._take_batch()
        if not batch:
            return
        running = self._running = _Running(batch)
        try:
            outcomes = await self._loop.run_in_executor(self._executor, self._run_batch, batch)
        except Exception:  # _run_batch handles engine errors itself; this is a bug in the worker
            log.exception("generation batch crashed")
            outcomes = {j.job_id: GenerationFailedError(FAILED_MESSAGE) for j in batch}
        finally:
            self._running = None
            for job in batch:
                self._jobs.pop(job.job_id, None)
        self._record_timing(batch, time.monotonic() - running.started, outcomes)
        for job in batch:
            outcome = outcomes.get(job.job_id) or GenerationFailedError(FAILED_MESSAGE)
            if job.cancel_requested or isinstance(outcome, JobCancelledError):
                job._finish("cancelled", error=JobCancelledError(CANCELLED_MESSAGE))
            elif isinstance(outcome, GenerationError):
                job._finish("failed", error=outcome)
            else:
                job._finish("done", result=outcome)

    def _record_timing(self, batch: list[JobHandle], elapsed: float,
                       outcomes: dict[str, GenerationResult | GenerationError]) -> None:
        """Fold a fully successful batch into the moving average (failed/cut-short batches would skew it)."""
        if not all(isinstance(outcomes.get(j.job_id), GenerationResult) for j in batch):
            return
        units = sum(_cost(j.request) for j in batch)
        if units <= 0 or elapsed <= 0:
            return
        sample = elapsed / units
        prev = self._seconds_per_unit
        self._seconds_per_unit = sample if prev is None else 0.7 * prev + 0.3 * sample

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Hand work to the loop from the pipeline thread; a closed loop just drops it."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(callback, *args)

    def _run_batch(self, batch: list[JobHandle]) -> dict[str, GenerationResult | GenerationError]:
        """Pipeline thread: generate (splitting the batch when the engine raises) and encode PNGs. Never raises."""
        outcomes: dict[str, GenerationResult | GenerationError] = {}
        started = time.monotonic()
        images = self._generate_splitting(batch, outcomes)
        elapsed = time.monotonic() - started
        for job, job_images in images:
            if job.cancel_requested:
                outcomes[job.job_id] = JobCancelledError(CANCELLED_MESSAGE)
                continue
            try:
                outcomes[job.job_id] = self._build_result(job, job_images, elapsed)
            except Exception:
                log.exception("encoding the images of job %s failed", job.job_id)
                outcomes[job.job_id] = GenerationFailedError(FAILED_MESSAGE)
        return outcomes

    def _build_result(self, job: JobHandle, images: list[Any], elapsed: float) -> GenerationResult:
        params = job.params
        if len(images) != params.count:
            raise RuntimeError(f"engine returned {len(images)} images for count={params.count}")
        try:  # the loaded model's name: "tiny" when the configured model fell back to it
            model_name = str(self.engine.model_label(params) or "unknown")
        except Exception:
            log.exception("engine.model_label failed")
            model_name = params.model or str(getattr(self.engine, "model_name", "") or "unknown")
        generated = []
        for index, image in enumerate(images):
            seed = params.seed + index
            png = encode_png(image, parameters_text(params, seed, model_name))
            generated.append(GeneratedImage(index=index, seed=seed, png=png, width=image.width, height=image.height))
        try:
            truncated = bool(self.engine.tokens_truncated(params))
        except Exception:
            log.exception("engine.tokens_truncated failed")
            truncated = False
        return GenerationResult(job_id=job.job_id, request=job.request, images=generated, model_name=model_name,
                                elapsed_seconds=elapsed, prompt_truncated=truncated)

    def _generate_splitting(self, batch: list[JobHandle],
                            outcomes: dict[str, GenerationResult | GenerationError]) -> list[tuple[JobHandle, list]]:
        """Run one engine call; if it raises, retry each half, so only the request at fault fails.

        Out of memory: free memory first (a smaller batch may fit). Any other error: a single bad request (a
        prompt that trips the engine) must not fail the members batched with it, so the batch is bisected down
        to the request(s) that raise on their own; that costs about log2(batch) extra calls per bad request.
        """
        if all(j.cancel_requested for j in batch):
            for job in batch:
                outcomes[job.job_id] = JobCancelledError(CANCELLED_MESSAGE)
            return []
        try:
            results = self.engine.generate([j.request for j in batch], on_step=self._step_callback(batch),
                                           should_stop=lambda: all(j.cancel_requested for j in batch))
        except Exception as exc:
            if all(j.cancel_requested for j in batch):
                for job in batch:
                    outcomes[job.job_id] = JobCancelledError(CANCELLED_MESSAGE)
                return []
            if isinstance(exc, JobRefusedError):  # e.g. a model that cannot load: only these jobs fail
                log.warning("jobs %s refused: %s", [j.job_id for j in batch], exc.message)
                for job in batch:
                    outcomes[job.job_id] = GenerationFailedError(exc.message)
                return []
            out_of_memory = self._is_oom(exc)
            if out_of_memory:
                self._free_memory()
            if len(batch) == 1:
                if out_of_memory:
                    log.warning("job %s ran out of GPU memory on its own", batch[0].job_id)
                    outcomes[batch[0].job_id] = GenerationFailedError(OOM_MESSAGE)
                else:
                    log.exception("generation failed for job %s", batch[0].job_id)
                    outcomes[batch[0].job_id] = GenerationFailedError(FAILED_MESSAGE)
                return []
            half = len(batch) // 2
            log.warning("%s with %d jobs; retrying in halves", "out of GPU memory" if out_of_memory else
                        f"generation failed ({type(exc).__name__})", len(batch))
            return self._generate_splitting(batch[:half], outcomes) + \
                self._generate_splitting(batch[half:], outcomes)
        if all(j.cancel_requested for j in batch):  # stopped early: whatever came back is incomplete
            for job in batch:
                outcomes[job.job_id] = JobCancelledError(CANCELLED_MESSAGE)
            return []
        if results is None or len(results) != len(batch):
            log.error("engine returned %s results for %d requests", None if results is None else len(results),
                      len(batch))
            for job in batch:
                outcomes[job.job_id] = GenerationFailedError(FAILED_MESSAGE)
            return []
        return list(zip(batch, results, strict=True))

    def _is_oom(self, exc: BaseException) -> bool:
        try:
            return bool(self.engine.is_out_of_memory(exc))
        except Exception:
            log.exception("engine.is_out_of_memory failed")
            return False

    def _free_memory(self) -> None:
        try:
            self.engine.free_memory()
        except Exception:
            log.exception("engine.free_memory failed")

    def _step_callback(self, batch: list[JobHandle]) -> Callable[..., None]:
        """Build on_step(step, total, latents=None) for one engine call: progress to every job, previews sometimes."""
        offsets = list(itertools.accumulate((j.params.count for j in batch), initial=0))
        preview = getattr(self.engine, "preview", None) if self.previews else None

        def on_step(step: int, total: int, latents: Any = None, *_: Any, **__: Any) -> None:
            running = self._running
            if running is not None:
                running.step, running.total = step, total
            previews: dict[int, bytes] = {}
            wanted = [i for i, j in enumerate(batch) if j.wants_preview and not j.cancel_requested]
            if (preview is not None and latents is not None and wanted and step < total
                    and step % self.preview_every == 0):
                try:
                    images = preview(latents)
                    for i in wanted:
                        previews[i] = _encode_preview(images[offsets[i]])
                except Exception:  # a preview is a nicety; never let it fail the job
                    log.debug("preview failed", exc_info=True)
            for i, job in enumerate(batch):
                self._post(job._push_progress, Progress(step=step, total=total, preview_png=previews.get(i)))

        return on_step
