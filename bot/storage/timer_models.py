"""The ``timers`` table (revision 0005): every durable deadline of the bot, whatever feature owns it.

One row per pending timer, RoboDanny's ``reminders`` table: what to run (``event``), when (``due_at``, indexed
because the scheduler always asks for the earliest) and with what (``payload``, a JSON object). A row is deleted
once its handler succeeded, so the table holds only work still to do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from bot.storage.base import Base, UTCDateTime

EVENT_MAX_CHARS = 64


class Timer(Base):
    """A pending deadline: ``event`` names the handler registered with :class:`bot.timers.timers.Timers`."""

    __tablename__ = "timers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event: Mapped[str] = mapped_column(String(EVENT_MAX_CHARS))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
