"""What a replayed inbox entry asks for: its own options, or (a button click) those rebuilt from the clicked job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.discord.replay import UNREADABLE_CLICK, options_of, origin_of_entry
from bot.gate.submission import Options
from bot.storage import inbox
from bot.storage import repository as repo
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


async def test_upscale_or_vary_click_rebuilds_the_child_from_the_stored_image_or_says_why_not(
        services: SimpleNamespace) -> None:
    parent = await new_job(services.db, **JOB)
    second = await repo.add_image(services.db, parent.id, index=1, seed=43, path="10/2.png", sha256="ab",
                                  size_bytes=10, width=128, height=96)
    click = await entry(services, 5, options={"derive": "vary_strong", "image_index": 1}, source="vary_button",
                        parent_job_id=parent.id)
    varied = await options_of(services, click)
    assert isinstance(varied, Options)
    assert (varied.derive, varied.image_index, varied.init_image_path) == ("vary_strong", 1, "10/2.png")
    assert varied.values["prompt"] == "a red kite"
    origin = origin_of_entry(click)
    assert (origin.parent_job_id, origin.parent_image_index, origin.source) == (parent.id, 1, "vary_button")

    async def answer_to(interaction_id: int, **changes: object) -> Options | str:
        fields = {"options": {"derive": "upscale", "image_index": 1}, "source": "upscale_button",
                  "parent_job_id": parent.id, **changes}
        return await options_of(services, await entry(services, interaction_id, **fields))

    assert await answer_to(6, options={"derive": "upscale", "image_index": 0}) == (
        f"Image 1 of job {parent.id} is no longer stored (old images are removed after a while), so it cannot be "
        "upscaled or varied; run the prompt again instead.")
    assert await answer_to(7, options={"derive": "upscale", "image_index": 2}) == f"Job {parent.id} has no image 3."
    assert await answer_to(8, guild_id=11) == "That job belongs to another server."
    assert await answer_to(9, options={"derive": "sharpen", "image_index": 1}) == UNREADABLE_CLICK
    await repo.mark_images_pruned(services.db, [second.id])
    assert "no longer stored" in await answer_to(10)
