"""GenerationWorker with a fake engine at the edge: fairness, batching, cancel, progress, faults, loop liveness.

The fake honours the engine contract (batch_key, generate with on_step/should_stop, is_out_of_memory,
free_memory, tokens_truncated, preview) and is steered with threading.Events, never with sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

import pytest
from PIL import Image

from generation.request import GenerationRequest, ImageParams
from generation.worker import (
    OOM_MESSAGE,
    GenerationError,
    GenerationFailedError,
    GenerationResult,
    GenerationWorker,
    JobCancelledError,
    JobHandle,
    Progress,
    QueueFullError,
)
from tests.helpers import SteppedEngine

pytestmark = pytest.mark.timeout(30)
WAIT = 10.0  # seconds a test waits on the fake engine before giving up (only reached when something is broken)


class FakeOOM(RuntimeError):
    pass


class FakeEngine(SteppedEngine):
    """Solid-colour images from the seed; blocks and fails on demand."""

    model_name = "fake-model"
    wait = WAIT

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.gates: dict[int, threading.Event] = {}  # call number -> gate for that call only
        self._started: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.oom_if: Callable[[Sequence[GenerationRequest]], bool] = lambda requests: False
        self.fail_prompts: set[str] = set()
        self.freed = 0
        self.truncate_prompts: set[str] = set()

    def before_steps(self, requests: Sequence[GenerationRequest], call: int) -> None:
        self.threads.add(threading.get_ident())
        self.started(call).set()
        super().before_steps(requests, call)
        gate = self.gates.get(call)
        if gate is not None:
            assert gate.wait(WAIT), "test never opened the gate"
        if any(r.params.prompt in self.fail_prompts for r in requests):
            raise ValueError("simulated engine bug")
        if self.oom_if(requests):
            raise FakeOOM("CUDA out of memory (simulated)")

    def images(self, requests: Sequence[GenerationRequest], blue: int = 7) -> list[list[Image.Image]]:
        return [[self.image(r.params, r.params.seed + i) for i in range(r.params.count)] for r in requests]

    def started(self, call: int) -> threading.Event:
        """Set once generate() call number ``call`` (0-based) has begun."""
        with self._lock:
            return self._started.setdefault(call, threading.Event())

    @staticmethod
    def image(params: ImageParams, seed: int) -> Image.Image:
        return Image.new("RGB", (params.width, params.height), (seed % 256, (seed // 256) % 256, 7))

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, FakeOOM)

    def free_memory(self) -> None:
        self.freed += 1

    def tokens_truncated(self, params: ImageParams) -> bool:
        return params.prompt in self.truncate_prompts

    def model_label(self, params: ImageParams) -> str:
        return params.model or self.model_name


def req(prompt: str, requester: str = "u1", *, size: int = 64, steps: int = 3, count: int = 1,
        seed: int = 1, **params) -> GenerationRequest:
    return GenerationRequest(ImageParams(prompt=prompt, negative_prompt="", seed=seed, steps=steps, guidance=7.0,
                                         width=size, height=size, count=count, scheduler="euler_a", **params),
                             requester_id=requester)


async def wait_thread_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT), "the fake engine never got there"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


async def outcome(handle: JobHandle) -> GenerationResult | GenerationError:
    try:
        return await handle
    except GenerationError as exc:
        return exc


async def test_one_job_produces_pngs_with_seeds_and_metadata(engine: FakeEngine) -> None:
    from generation.png import read_parameters

    engine.truncate_prompts = {"a cat"}
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    await worker.start()
    try:
        handle = worker.submit(req("a cat", count=2, seed=10), job_id="job-1")
        result = await handle
    finally:
        await worker.close()
    assert handle.status == "done"
    assert result.job_id == "job-1" and result.model_name == "fake-model" and result.prompt_truncated
    assert [(i.index, i.seed, i.width, i.height) for i in result.images] == [(0, 10, 64, 64), (1, 11, 64, 64)]
    assert all(i.png.startswith(b"\x89PNG\r\n\x1a\n") for i in result.images)
    text = read_parameters(result.images[1].png)
    assert text is not None and text.startswith("a cat\n") and "Seed: 11," in text and "Model: fake-model" in text
    assert result.elapsed_seconds >= 0
    assert worker.position("job-1") is None and worker.jobs_of("u1") == []


async def test_a_shared_pipeline_thread_is_used_and_left_running(engine: FakeEngine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    shared = ThreadPoolExecutor(max_workers=1)
    try:
        shared_thread = shared.submit(threading.get_ident).result()
        worker = GenerationWorker(engine, queue_size=4, max_batch_size=4, executor=shared)
        await worker.start()
        await worker.submit(req("a cat"))
        await worker.close()
        assert engine.threads == {shared_thread}
        assert shared.submit(lambda: 42).result() == 42  # the worker did not shut down what it does not own
    finally:
        shared.shutdown()
    with pytest.raises(ValueError, match="exactly one thread"):
        GenerationWorker(engine, queue_size=4, max_batch_size=4, executor=ThreadPoolExecutor(max_workers=2))


async def test_fair_round_robin_across_requesters(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    worker = GenerationWorker(engine, queue_size=16, max_batch_size=1)
    await worker.start()
    try:
        first = worker.submit(req("z1", "z"))
        await wait_thread_event(engine.entered)
        handles = [worker.submit(req(p, r)) for p, r in
                   [("a1", "a"), ("a2", "a"), ("a3", "a"), ("a4", "a"), ("b1", "b"), ("c1", "c"), ("z2", "z")]]
        assert worker.position(first.job_id) == 0
        # z was just served, so its second job waits for everyone else's first
        expected = ["a1", "b1", "c1", "z2", "a2", "a3", "a4"]
        positions = {h.params.prompt: worker.position(h.job_id) for h in handles}
        assert sorted(positions, key=positions.__getitem__) == expected
        assert worker.jobs_of("a") == [h.job_id for h in handles[:4]]
        assert worker.queued_count == 7
        engine.gate.set()
        await asyncio.gather(first, *handles)
    finally:
        await worker.close()
    assert [c[0] for c in engine.calls] == ["z1", *expected]


async def test_compatible_requests_of_different_members_share_a_batch(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    worker = GenerationWorker(engine, queue_size=16, max_batch_size=4)
    await worker.start()
    try:
        first = worker.submit(req("z1", "z"))
        await wait_thread_event(engine.entered)
        handles = [
            worker.submit(req("a1", "a")),
            worker.submit(req("a2", "a")),  # same member: never batched with a1 (only queue heads are)
            worker.submit(req("b1", "b")),
            worker.submit(req("c1", "c", size=128)),  # incompatible size: runs on its own
            worker.submit(req("d1", "d", count=2)),  # fills the batch to exactly 4 images
            worker.submit(req("e1", "e")),  # would make 5 images: waits
        ]
        engine.gate.set()
        results = await asyncio.gather(first, *handles)
    finally:
        await worker.close()
    assert engine.calls == [["z1"], ["a1", "b1", "d1"], ["c1"], ["e1", "a2"]]
    assert [len(r.images) for r in results] == [1, 1, 1, 1, 1, 2, 1]


async def test_batch_never_exceeds_max_images(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    worker = GenerationWorker(engine, queue_size=16, max_batch_size=4)
    await worker.start()
    try:
        first = worker.submit(req("z1", "z"))
        await wait_thread_event(engine.entered)
        handles = [worker.submit(req("a", "a", count=3)), worker.submit(req("b", "b", count=2)),
                   worker.submit(req("c", "c", count=1))]
        engine.gate.set()
        await asyncio.gather(first, *handles)
    finally:
        await worker.close()
    assert engine.calls == [["z1"], ["a", "c"], ["b"]]


async def test_queue_full_is_refused_with_a_readable_message(engine: FakeEngine) -> None:
    worker = GenerationWorker(engine, queue_size=2, max_batch_size=1)  # not started: everything stays queued
    worker.submit(req("1"))
    worker.submit(req("2", "other"))
    with pytest.raises(QueueFullError) as info:
        worker.submit(req("3"))
    assert info.value.message == "The queue is full (2 jobs waiting). Please try again in a few minutes."
    assert str(info.value) == info.value.message
    await worker.close()
    with pytest.raises(QueueFullError):
        worker.submit(req("4"))


async def test_cancel_queued_removes_it_at_once(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=1)
    await worker.start()
    try:
        running = worker.submit(req("run", "a"))
        await wait_thread_event(engine.entered)
        queued = worker.submit(req("wait", "b"))
        later = worker.submit(req("later", "c"))
        assert worker.position(later.job_id) == 2
        assert queued.cancel() is True
        assert queued.status == "cancelled" and worker.queued_count == 1
        assert worker.position(queued.job_id) is None and worker.position(later.job_id) == 1
        with pytest.raises(JobCancelledError):
            await queued
        assert [p async for p in queued.progress()] == []
        engine.gate.set()
        await asyncio.gather(running, later)
        assert queued.cancel() is False and running.cancel() is False
    finally:
        await worker.close()
    assert [c[0] for c in engine.calls] == ["run", "later"]


async def test_cancel_running_stops_at_the_next_step(engine: FakeEngine) -> None:
    engine.pause_after_step = 2
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    await worker.start()
    try:
        handle = worker.submit(req("long", steps=20))
        await wait_thread_event(engine.paused)
        assert handle.status == "running" and worker.position(handle.job_id) == 0
        assert handle.cancel() is True
        engine.resume.set()
        with pytest.raises(JobCancelledError):
            await handle
        assert handle.status == "cancelled"
        engine.pause_after_step = None
        after = await worker.submit(req("next"))  # the worker carries on
    finally:
        await worker.close()
    assert engine.stopped_at == 3
    assert len(after.images) == 1


async def test_cancelling_one_job_of_a_batch_finishes_the_others(engine: FakeEngine) -> None:
    engine.gates = {0: threading.Event(), 1: threading.Event()}
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    await worker.start()
    try:
        first = worker.submit(req("z", "z"))
        await wait_thread_event(engine.started(0))
        a = worker.submit(req("a", "a"))
        b = worker.submit(req("b", "b"))
        engine.gates[0].set()
        await first
        await wait_thread_event(engine.started(1))  # [a, b] is running now
        assert a.status == "running" and b.status == "running"
        assert b.cancel() is True
        engine.gates[1].set()
        result_a = await a
        with pytest.raises(JobCancelledError):
            await b
    finally:
        await worker.close()
    assert engine.calls[1] == ["a", "b"] and engine.stopped_at is None
    assert len(result_a.images) == 1 and b.status == "cancelled"


async def test_progress_arrives_in_order_and_ends(engine: FakeEngine) -> None:
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4, preview_every=2)
    a = worker.submit(req("a", "a", steps=5))
    b = worker.submit(req("b", "b", steps=5))
    seen: dict[str, list[Progress]] = {"a": [], "b": []}

    async def consume(handle: JobHandle) -> None:
        async for item in handle.progress():
            seen[handle.params.prompt].append(item)

    consumers = [asyncio.create_task(consume(a)), asyncio.create_task(consume(b))]
    await asyncio.sleep(0)  # let both consumers subscribe before the worker starts
    await worker.start()
    try:
        await asyncio.gather(a, b)
        await asyncio.wait_for(asyncio.gather(*consumers), WAIT)  # ends because the jobs ended
    finally:
        await worker.close()
    assert engine.calls == [["a", "b"]]
    for items in seen.values():
        assert [(p.step, p.total) for p in items] == [(i, 5) for i in range(1, 6)]
        with_preview = [p.step for p in items if p.preview_png is not None]
        assert with_preview == [2, 4]  # a modest rate, and none on the final step
        assert all(p.preview_png.startswith(b"\x89PNG") for p in items if p.preview_png)


async def test_slow_progress_consumer_never_blocks_the_worker(engine: FakeEngine) -> None:
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    handle = worker.submit(req("many steps", steps=50))
    iterator = handle.progress().__aiter__()
    first_read = asyncio.create_task(iterator.__anext__())
    await asyncio.sleep(0)
    await worker.start()
    try:
        await handle  # nobody reads progress after the first event; the job still finishes
        items = [await first_read] + [p async for p in iterator]
    finally:
        await worker.close()
    steps = [p.step for p in items]
    assert steps == sorted(steps) and steps[-1] == 50 and len(steps) <= 17  # old events were dropped


async def test_oom_splits_the_batch_and_retries_each_half(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    engine.oom_if = lambda requests: len(requests) > 1
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=4)
    await worker.start()
    try:
        first = worker.submit(req("z", "z"))
        await wait_thread_event(engine.entered)
        handles = [worker.submit(req(p, p)) for p in "abcd"]
        engine.gate.set()
        results = await asyncio.gather(first, *handles)
    finally:
        await worker.close()
    assert all(len(r.images) == 1 for r in results)
    assert engine.calls == [["z"], ["a", "b", "c", "d"], ["a", "b"], ["a"], ["b"], ["c", "d"], ["c"], ["d"]]
    assert engine.freed == 3


async def test_a_job_that_ooms_alone_fails_while_the_others_succeed(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    engine.oom_if = lambda requests: any(r.params.prompt == "huge" for r in requests)
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=4)
    await worker.start()
    try:
        first = worker.submit(req("z", "z"))
        await wait_thread_event(engine.entered)
        ok1, huge, ok2 = worker.submit(req("ok1", "a")), worker.submit(req("huge", "b")), worker.submit(req("ok2", "c"))
        engine.gate.set()
        outcomes = [await outcome(h) for h in (first, ok1, huge, ok2)]
    finally:
        await worker.close()
    assert isinstance(outcomes[2], GenerationFailedError) and outcomes[2].message == OOM_MESSAGE
    assert huge.status == "failed"
    assert all(isinstance(o, GenerationResult) for i, o in enumerate(outcomes) if i != 2)


async def test_an_engine_error_fails_that_batch_only_and_the_worker_carries_on(
    engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.fail_prompts = {"boom"}
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=4)
    await worker.start()
    try:
        with caplog.at_level(logging.ERROR, logger="generation.worker"):
            failure = await outcome(worker.submit(req("boom")))
        after = await worker.submit(req("fine", steps=2))
    finally:
        await worker.close()
    assert isinstance(failure, GenerationFailedError)
    assert "simulated" not in failure.message and "Traceback" not in failure.message
    assert any(r.exc_info and "simulated engine bug" in str(r.exc_info[1]) for r in caplog.records)
    assert len(after.images) == 1


async def test_event_loop_keeps_running_while_the_engine_blocks(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    await worker.start()
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    beat = asyncio.create_task(heartbeat())
    try:
        handle = worker.submit(req("slow"))
        await wait_thread_event(engine.entered)
        start = ticks
        for _ in range(50):
            await asyncio.sleep(0)
        assert ticks - start >= 40 and not handle.done  # the loop ran while the pipeline call was blocked
        engine.gate.set()
        await handle
        await worker.submit(req("again"))
    finally:
        beat.cancel()
        await worker.close()
    assert len(engine.threads) == 1 and threading.get_ident() not in engine.threads


async def test_positions_estimates_and_close(engine: FakeEngine) -> None:
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=1)
    await worker.start()
    warm = worker.submit(req("warm-up"))
    assert worker.estimate_seconds(warm.job_id) is None  # no history yet
    await warm
    engine.gate = threading.Event()
    running = worker.submit(req("running", "a"))
    await wait_thread_event(engine.started(1))
    assert worker.position(running.job_id) == 0
    q1 = worker.submit(req("q1", "b"))
    q2 = worker.submit(req("q2", "c"))
    e_run, e1, e2 = (worker.estimate_seconds(h.job_id) for h in (running, q1, q2))
    assert e_run is not None and e1 is not None and e2 is not None
    assert 0 <= e_run <= e1 <= e2
    assert worker.estimate_seconds("unknown") is None and worker.position("unknown") is None
    closing = asyncio.create_task(worker.close())
    await asyncio.sleep(0)
    with pytest.raises(JobCancelledError):
        await q1
    assert q2.status == "cancelled" and not closing.done()
    engine.gate.set()
    await closing
    assert running.status == "done"  # the running batch was allowed to finish


async def test_awaiting_task_cancelled_does_not_cancel_the_job(engine: FakeEngine) -> None:
    engine.gate = threading.Event()
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    await worker.start()
    try:
        handle = worker.submit(req("x"))
        waiter = asyncio.create_task(_await(handle))
        await wait_thread_event(engine.entered)
        waiter.cancel()
        engine.gate.set()
        result = await handle
    finally:
        await worker.close()
    assert handle.status == "done" and len(result.images) == 1


async def _await(handle: JobHandle) -> GenerationResult:
    return await handle


# --- the real tiny engine ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine():
    from generation.engine import DiffusionEngine
    from generation.loading import load_pipeline
    from generation.settings import GenerationSettings

    settings = GenerationSettings(model="tiny", device="cpu", dtype="fp32")
    return DiffusionEngine(load_pipeline(settings), settings)


def _pixels(png: bytes):
    import io

    import numpy as np

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


@pytest.mark.timeout(120)
async def test_tiny_same_seed_alone_or_batched_gives_the_same_image(tiny_engine, monkeypatch) -> None:
    calls: list[int] = []
    real_generate = tiny_engine.generate

    def recording_generate(requests, **kwargs):
        calls.append(len(requests))
        return real_generate(requests, **kwargs)

    monkeypatch.setattr(tiny_engine, "generate", recording_generate)
    worker = GenerationWorker(tiny_engine, queue_size=8, max_batch_size=4)
    await worker.start()
    try:
        alone = await worker.submit(req("a lighthouse at dusk", "a", steps=4, seed=123))
        # three compatible jobs from different members queued together share one pipeline call
        handles = [worker.submit(req(p, r, steps=4, seed=s)) for p, r, s in
                   [("a red bicycle", "b", 7), ("a lighthouse at dusk", "a", 123), ("mountains", "c", 99)]]
        batched = await asyncio.gather(*handles)
    finally:
        await worker.close()
    assert calls == [1, 3]
    assert alone.model_name == "tiny" and not alone.prompt_truncated
    diff = abs(_pixels(alone.images[0].png) - _pixels(batched[1].images[0].png)).max()
    assert diff <= 4, f"same seed differs by {diff}/255 between alone and batched"
    assert abs(_pixels(batched[0].images[0].png) - _pixels(batched[1].images[0].png)).max() > 4


@pytest.mark.timeout(120)
async def test_tiny_progress_reports_every_step(tiny_engine) -> None:
    worker = GenerationWorker(tiny_engine, queue_size=8, max_batch_size=4, preview_every=2)
    handle = worker.submit(req("a tea garden with mist", steps=4, seed=1))
    seen: list[Progress] = []

    async def consume() -> None:
        async for item in handle.progress():
            seen.append(item)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await worker.start()
    try:
        result = await handle
        await consumer
    finally:
        await worker.close()
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[1].preview_png is not None and seen[1].preview_png.startswith(b"\x89PNG")
    assert result.images[0].width == 64 and result.images[0].height == 64


async def test_estimates_count_the_steps_img2img_really_runs(engine: FakeEngine) -> None:
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=1)
    await worker.start()
    try:
        await worker.submit(req("warm-up", steps=4))
        engine.gate = threading.Event()
        running = worker.submit(req("running", "a", steps=4))
        await wait_thread_event(engine.started(1))
        txt2img = worker.submit(req("t", "b", steps=8))
        img2img = worker.submit(req("i", "c", steps=8, strength=0.5))  # runs int(8 * 0.5) = 4 steps
        ahead, t_done, i_done = (worker.estimate_seconds(h.job_id) for h in (running, txt2img, img2img))
        assert ahead is not None and t_done is not None and i_done is not None
        assert (i_done - t_done) == pytest.approx((t_done - ahead) / 2)
        engine.gate.set()
        await asyncio.gather(running, txt2img, img2img)
    finally:
        await worker.close()


async def test_a_request_that_makes_the_engine_raise_fails_alone(engine: FakeEngine) -> None:
    """Not out of memory: the batch is bisected all the same, so the members batched with it get their images."""
    engine.gate = threading.Event()
    engine.fail_prompts = {"bad"}
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=4)
    await worker.start()
    try:
        first = worker.submit(req("z", "z"))
        await wait_thread_event(engine.entered)
        handles = [worker.submit(req(p, p)) for p in ("a", "bad", "c", "d")]
        engine.gate.set()
        outcomes = [await outcome(h) for h in (first, *handles)]
    finally:
        await worker.close()
    by_prompt = dict(zip(["z", "a", "bad", "c", "d"], outcomes, strict=True))
    assert isinstance(by_prompt["bad"], GenerationFailedError) and by_prompt["bad"].message != OOM_MESSAGE
    assert handles[1].status == "failed"
    assert all(isinstance(by_prompt[p], GenerationResult) and len(by_prompt[p].images) == 1 for p in "zacd")
    # One call for the batch, then halves until "bad" is alone; the good half runs once.
    assert engine.calls == [["z"], ["a", "bad", "c", "d"], ["a", "bad"], ["a"], ["bad"], ["c", "d"]]
    assert engine.freed == 0  # not out of memory: nothing to free
