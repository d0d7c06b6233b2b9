"""The ``queue`` section of config.yaml: where batches run (this process, or workers over Redis).

It lives in ``generation`` (like :class:`generation.settings.GenerationSettings`) because the worker process,
which never imports the Discord side, reads it too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QueueSettings(BaseModel):
    """Backend, Redis address and the fault-tolerance knobs of remote workers."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "redis"] = Field(
        "local", description="local: batches run in the bot process; redis: on `imagine-bot worker` processes")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis server shared by the bot and its workers")
    redis_prefix: str = Field("imagine", min_length=1, description="key prefix, so several bots can share a Redis")
    lease_seconds: float = Field(
        30.0, gt=0, description="a worker that stops extending its lease this long is presumed dead; its batch "
                                "is reclaimed by another worker")
    prefetch: int = Field(1, ge=0, le=16, description="batches a worker holds beyond the one it runs")
    max_attempts: int = Field(
        3, ge=1, description="a batch handed out this many times (its workers died) fails instead of looping")
    max_result_mb: float = Field(64.0, gt=0, description="largest PNG payload of one job a worker sends back")
