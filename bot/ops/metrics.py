"""The bot process's metrics: generation's (:class:`~generation.metrics.GenerationMetrics`) plus what only the bot
sees: refusals by kind, images withheld by the safety checker, and how fast interactions are acknowledged.

One :class:`BotMetrics` per bot, over its own registry (tests build as many as they like); the composition root
hands it to the worker, the gate and delivery, and the metrics server exposes its registry.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.process_collector import ProcessCollector

from generation.metrics import GenerationMetrics

REFUSAL_KINDS = ("invalid", "filtered", "rate_limited", "queue_full")  # bot.gate.submission.RefusalKind
# Discord drops an interaction that is not acknowledged within 3 s.
ACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0)


class BotMetrics:
    """Every metric of the bot process, on one registry (``registry``) that the metrics server serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU seconds, open files: process_* like any exporter
        self.generation = GenerationMetrics(self.registry)
        self.refusals = Counter("imagine_refusals", "Requests the gate refused, by kind.", ["kind"],
                                registry=self.registry)
        self.interaction_ack = Histogram("imagine_interaction_ack_seconds",
                                         "Seconds from an /imagine interaction's creation to its acknowledgement.",
                                         buckets=ACK_BUCKETS, registry=self.registry)
        for kind in REFUSAL_KINDS:
            self.refusals.labels(kind=kind)

    def refused(self, kind: str, images: int) -> None:
        """The gate refused a request of ``images`` images (0 when it was not even valid)."""
        self.refusals.labels(kind=kind).inc()
        self.generation.count_images("refused", images)

    def withheld(self, images: int) -> None:
        """The safety checker held back ``images`` made images."""
        self.generation.count_images("withheld", images)

    def acknowledged(self, created_at: datetime, now: datetime | None = None) -> None:
        """An interaction created at ``created_at`` (its snowflake time) was just acknowledged."""
        now = now or datetime.now(UTC)
        self.interaction_ack.observe(max(0.0, (now - created_at).total_seconds()))
