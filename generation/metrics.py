"""Prometheus metrics of image generation, for the bot process and for every worker process alike.

Why a class over a registry that is passed in (never prometheus_client's global default registry): each
process, and each test, owns its registry, so two workers in one benchmark or two tests in one run never see
each other's numbers. The worker updates them through the few methods below (an optional hook: a worker built
without metrics does nothing extra); the names follow TGI/vLLM (``imagine_`` prefix, base units, ``_total`` for
counters).

``imagine_images_total`` is labelled by outcome: ``done``, ``failed`` and ``cancelled`` are counted where the
pipeline runs; ``refused`` (the gate said no) and ``withheld`` (the safety checker held a made image back, so it
is also counted as ``done``) are counted by the bot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ImageOutcome = Literal["done", "failed", "cancelled", "refused", "withheld"]
IMAGE_OUTCOMES: tuple[ImageOutcome, ...] = ("done", "failed", "cancelled", "refused", "withheld")

# Seconds: from a busy GPU's sub-second batches to a long queue on a shared card.
WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class GenerationMetrics:
    """Queue depth, waits, durations, batch sizes, images by outcome, live workers and pipeline speed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.queue_depth = Gauge("imagine_queue_depth", "Jobs waiting for a worker (not running).",
                                 registry=registry)
        self.queue_wait = Histogram("imagine_queue_wait_seconds", "Seconds from a job's acceptance to its start.",
                                    buckets=WAIT_BUCKETS, registry=registry)
        self.job_duration = Histogram("imagine_job_duration_seconds",
                                      "Seconds from a job's start to its end (done, failed or cancelled).",
                                      buckets=DURATION_BUCKETS, registry=registry)
        self.batch_size = Histogram("imagine_batch_size", "Images per pipeline call.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.images = Counter("imagine_images", "Images by outcome (withheld ones are also counted as done).",
                              ["outcome"], registry=registry)
        self.workers_alive = Gauge("imagine_workers_alive", "Generation workers running and taking jobs.",
                                   registry=registry)
        self.steps_per_second = Gauge("imagine_steps_per_second",
                                      "Denoising steps per second of the last fully successful pipeline call.",
                                      registry=registry)
        for outcome in IMAGE_OUTCOMES:  # every series exists from the start, so rate() sees the first increment
            self.images.labels(outcome=outcome)

    def set_queue_depth(self, jobs: int) -> None:
        """Set by the queue's owner whenever it changes (not read at scrape time: scrapes run on another thread)."""
        self.queue_depth.set(jobs)

    def worker_started(self) -> None:
        self.workers_alive.inc()

    def worker_stopped(self) -> None:
        self.workers_alive.dec()

    def batch_started(self, waits: Sequence[float], images: int) -> None:
        """A pipeline call starts: each job's wait since acceptance, and the images it makes together."""
        for wait in waits:
            self.queue_wait.observe(max(0.0, wait))
        self.batch_size.observe(images)

    def job_ended(self, outcome: ImageOutcome, images: int, seconds: float | None = None) -> None:
        """A job ended with ``outcome``; ``seconds`` since its start (None: it never started)."""
        self.count_images(outcome, images)
        if seconds is not None:
            self.job_duration.observe(max(0.0, seconds))

    def count_images(self, outcome: ImageOutcome, images: int) -> None:
        if images > 0:
            self.images.labels(outcome=outcome).inc(images)

    def pipeline_speed(self, steps: int, seconds: float) -> None:
        """A pipeline call ran ``steps`` denoising steps in ``seconds``."""
        if steps > 0 and seconds > 0:
            self.steps_per_second.set(steps / seconds)
