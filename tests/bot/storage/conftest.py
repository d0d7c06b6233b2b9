"""A fresh SQLite file per test, with the schema created straight from the models (fast)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.storage.db import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'db' / 'imagine.db'}")
    await database.create_all()
    yield database
    await database.close()
