"""What a replayed inbox entry asks for: its own options, or (a Rerun click) those of the clicked job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.discord.replay import options_of, origin_of_entry
from bot.gate.submission import Options
from bot.storage import inbox
from bot.storage.db import Database
from bot.storage.records import InboxRecord
from tests.helpers import new_job

ENTRY = dict(application_id=50, token="tok", guild_id=10, channel_id=20, user_id=30, role_ids=(7,))
JOB = dict(guild_id=10, channel_id=20, user_id=31, prompt="a red kite", negative_prompt="fog", seed=42, steps=9,
           guidance=6.5, width=128, height=96, count=2, scheduler="euler", model="tiny")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'replay.db'}")
    await db.create_all()
    yield SimpleNamespace(db=db)
    await db.close()


async def entry(services: SimpleNamespace, interaction_id: int, **changes: object) -> InboxRecord:
    await inbox.record(services.db, interaction_id=interaction_id, **{**ENTRY, **changes})  # type: ignore[arg-type]
    return next(e for e in await inbox.pending(services.db) if e.interaction_id == interaction_id)


async def test_imagine_entry_gives_back_its_options_and_origin(services: SimpleNamespace) -> None:
    options = Options.of(prompt="a lighthouse", seed=5, steps=12, count=3)
    stored = await entry(services, 1, options={**options.values, "a_field_from_a_newer_version": 1})
    replayed = await options_of(services, stored)
    assert isinstance(replayed, Options) and dict(replayed.values) == dict(options.values)
    origin = origin_of_entry(stored)
    assert (origin.interaction_id, origin.interaction_token, origin.application_id) == (1, "tok", 50)
    assert (origin.user_id, origin.guild_id, origin.role_ids, origin.source) == (30, 10, (7,), "imagine")


async def test_rerun_click_reruns_the_clicked_job_or_says_why_not(services: SimpleNamespace) -> None:
    parent = await new_job(services.db, **JOB)
    click = await entry(services, 2, options={}, source="rerun_button", parent_job_id=parent.id)
    rerun = await options_of(services, click)
    assert isinstance(rerun, Options) and "seed" not in rerun.values
    expected = {"prompt": "a red kite", "negative_prompt": "fog", "steps": 9, "guidance": 6.5, "width": 128,
                "height": 96, "count": 2, "scheduler": "euler"}
    assert {name: rerun.values[name] for name in expected} == expected
    assert origin_of_entry(click).parent_job_id == parent.id

    gone = await entry(services, 3, options={}, source="rerun_button", parent_job_id=parent.id + 100)
    assert await options_of(services, gone) == "I no longer know that job."
    elsewhere = await entry(services, 4, options={}, source="rerun_button", parent_job_id=parent.id, guild_id=11)
    assert await options_of(services, elsewhere) == "That job belongs to another server."
