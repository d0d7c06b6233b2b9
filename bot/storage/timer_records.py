"""Frozen records the timer repository takes and returns (no ORM object leaves ``bot.storage``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JSONScalar = str | int | float | bool
"""What a payload key can be matched against when timers are deleted by payload."""


@dataclass(frozen=True)
class NewTimer:
    """A timer to store: ``payload`` must be a JSON object (it is stored as JSON and handed back as a dict)."""

    event: str
    due_at: datetime
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TimerRecord:
    id: int
    event: str
    due_at: datetime
    payload: Mapping[str, Any]
    created_at: datetime
