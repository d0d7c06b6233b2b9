"""GenerationMetrics as a real GenerationWorker drives it: values are read back from the registry the test owns.

The fake engine is held with threading.Events (never sleeps), so what is queued and what runs is known exactly
whenever the test reads a value.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from generation.metrics import IMAGE_OUTCOMES, GenerationMetrics
from generation.request import GenerationRequest, ImageParams
from generation.worker import GenerationError, GenerationResult, GenerationWorker, JobCancelledError, JobHandle
from tests.helpers import SolidEngine

pytestmark = pytest.mark.timeout(30)
WAIT = 10.0  # only reached when something is broken


class HeldEngine(SolidEngine):
    """Solid images; each generate() call waits for ``release`` and fails for prompts in ``fail_prompts``."""

    model_name = "held"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail_prompts: set[str] = set()
        self.calls = 0

    def batch_key(self, request: GenerationRequest) -> tuple:
        p = request.params
        return (p.width, p.height, p.steps)

    def generate(self, requests: Sequence[GenerationRequest], *, on_step=None, should_stop=None):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the engine"
        total = requests[0].params.denoising_steps
        for step in range(1, total + 1):
            if should_stop is not None and should_stop():
                return [[] for _ in requests]
            if on_step is not None:
                on_step(step, total, None)
        if any(r.params.prompt in self.fail_prompts for r in requests):
            raise ValueError("simulated engine failure")
        return self.images(requests)


def req(prompt: str, requester: str, *, count: int = 1, steps: int = 3, size: int = 64) -> GenerationRequest:
    return GenerationRequest(ImageParams(prompt=prompt, seed=1, steps=steps, width=size, height=size, count=count),
                             requester_id=requester)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    assert sample is not None, f"{name}{labels} is not exported"
    return sample


def images(registry: CollectorRegistry) -> dict[str, float]:
    return {outcome: value(registry, "imagine_images_total", outcome=outcome) for outcome in IMAGE_OUTCOMES}


async def outcome(handle: JobHandle) -> GenerationResult | GenerationError:
    try:
        return await handle
    except GenerationError as exc:
        return exc


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def engine() -> HeldEngine:
    return HeldEngine()


async def test_every_series_exists_at_zero_before_any_job(registry: CollectorRegistry) -> None:
    GenerationMetrics(registry)
    assert images(registry) == dict.fromkeys(IMAGE_OUTCOMES, 0.0)
    for name in ("imagine_queue_depth", "imagine_workers_alive", "imagine_steps_per_second",
                 "imagine_queue_wait_seconds_count", "imagine_job_duration_seconds_count", "imagine_batch_size_count"):
        assert value(registry, name) == 0.0


async def test_metrics_follow_jobs_through_the_worker(registry: CollectorRegistry, engine: HeldEngine) -> None:
    metrics = GenerationMetrics(registry)
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=4, previews=False, metrics=metrics)
    await worker.start()
    assert value(registry, "imagine_workers_alive") == 1
    try:
        first = worker.submit(req("first", "alice", count=2))
        assert await asyncio.to_thread(engine.entered.wait, WAIT)  # running, held: one batch of 2 images
        queued = [worker.submit(req("b", "bob")), worker.submit(req("c", "carol", count=2)),
                  worker.submit(req("d", "dave", steps=5))]  # d cannot share a batch with b and c (other steps)
        assert value(registry, "imagine_queue_depth") == 3
        assert value(registry, "imagine_batch_size_count") == 1 and value(registry, "imagine_batch_size_sum") == 2
        assert value(registry, "imagine_queue_wait_seconds_count") == 1
        assert value(registry, "imagine_job_duration_seconds_count") == 0  # nothing has ended yet

        engine.release.set()
        results = [await first] + [await handle for handle in queued]
    finally:
        await worker.close()
    assert value(registry, "imagine_workers_alive") == 0
    assert value(registry, "imagine_queue_depth") == 0
    assert images(registry) == {"done": 6, "failed": 0, "cancelled": 0, "refused": 0, "withheld": 0}
    assert engine.calls == 3  # [first], [b, c], [d]
    assert value(registry, "imagine_batch_size_count") == 3 and value(registry, "imagine_batch_size_sum") == 6
    assert value(registry, "imagine_batch_size_bucket", le="1.0") == 1  # [d]; [first] and [b, c] made 2 and 3
    assert value(registry, "imagine_queue_wait_seconds_count") == 4
    assert value(registry, "imagine_job_duration_seconds_count") == 4
    # The last batch was d alone: its denoising steps over the engine's own time for it.
    assert value(registry, "imagine_steps_per_second") == pytest.approx(5 / results[-1].elapsed_seconds)


async def test_failed_and_cancelled_images_are_counted(registry: CollectorRegistry, engine: HeldEngine) -> None:
    engine.fail_prompts = {"broken"}
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=1, previews=False,
                              metrics=GenerationMetrics(registry))
    await worker.start()
    try:
        running = worker.submit(req("ok", "alice"))
        assert await asyncio.to_thread(engine.entered.wait, WAIT)
        cancelled_queued = worker.submit(req("never", "bob", count=3))
        broken = worker.submit(req("broken", "carol", count=2))
        assert value(registry, "imagine_queue_depth") == 2
        assert cancelled_queued.cancel()
        assert value(registry, "imagine_queue_depth") == 1
        assert images(registry)["cancelled"] == 3
        assert value(registry, "imagine_job_duration_seconds_count") == 0  # it never started: no duration

        assert running.cancel()  # stops at its next step
        engine.release.set()
        assert isinstance(await outcome(running), JobCancelledError)
        assert isinstance(await outcome(broken), GenerationError)
    finally:
        await worker.close()
    assert images(registry) == {"done": 0, "failed": 2, "cancelled": 4, "refused": 0, "withheld": 0}
    assert value(registry, "imagine_job_duration_seconds_count") == 2  # the running cancelled one and the failed one
    assert value(registry, "imagine_steps_per_second") == 0  # no batch succeeded


async def test_jobs_dropped_by_a_shutdown_are_not_counted_as_cancelled(registry: CollectorRegistry,
                                                                     engine: HeldEngine) -> None:
    """They stay journalled and run after the restart, so counting them now would count them twice."""
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=1, previews=False,
                              metrics=GenerationMetrics(registry))
    await worker.start()
    running = worker.submit(req("running", "alice"))
    assert await asyncio.to_thread(engine.entered.wait, WAIT)
    waiting = worker.submit(req("waiting", "bob"))
    closing = asyncio.create_task(worker.close())
    assert isinstance(await outcome(waiting), JobCancelledError)
    engine.release.set()
    await closing
    assert isinstance(await outcome(running), GenerationResult)
    assert images(registry) == {"done": 1, "failed": 0, "cancelled": 0, "refused": 0, "withheld": 0}


async def test_two_workers_on_two_registries_do_not_mix(engine: HeldEngine) -> None:
    engine.release.set()
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4, previews=False,
                              metrics=GenerationMetrics(mine))
    GenerationMetrics(theirs)
    await worker.start()
    try:
        await worker.submit(req("one", "alice", count=2))
    finally:
        await worker.close()
    assert images(mine)["done"] == 2 and images(theirs)["done"] == 0
