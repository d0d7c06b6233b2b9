"""Where a result goes: the interaction webhook while its token is young, else a channel message."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import discord
import pytest

from bot.discord.delivery import TOKEN_USABLE_FOR, token_issued_at, token_usable
from bot.discord.formatting import job_embed, parameters_text
from bot.storage.records import JobRecord
from tests.helpers import job_record

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def job(**changes) -> JobRecord:
    base = job_record(
        id=42, guild_id=1, channel_id=2, user_id=3, interaction_id=None, interaction_token="tok" * 20,
        application_id=99, message_id=None, prompt="a **bold** cat", negative_prompt="blurry", seed=7, steps=2,
        guidance=7.5, width=64, height=64, count=2, scheduler="euler_a", model="tiny", status="queued", error=None,
        parent_job_id=None, queued_at=NOW, started_at=None, finished_at=None,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(("age", "usable"), [
    (timedelta(0), True),
    (timedelta(minutes=13, seconds=59), True),
    (TOKEN_USABLE_FOR, False),
    (timedelta(minutes=15), False),
    (timedelta(hours=3), False),
])
def test_token_age_decides(age: timedelta, usable: bool) -> None:
    assert token_usable(job(), NOW + age) is usable


def test_no_token_means_channel_message() -> None:
    assert not token_usable(job(interaction_token=None), NOW)
    assert not token_usable(job(application_id=None), NOW)


def test_naive_timestamps_are_utc() -> None:
    naive = job(queued_at=NOW.replace(tzinfo=None))
    assert token_usable(naive, NOW + timedelta(minutes=1))
    assert not token_usable(naive, NOW + timedelta(minutes=20))


def test_interaction_snowflake_is_the_clock_when_plausible() -> None:
    issued = NOW - timedelta(minutes=10)  # the member clicked 10 minutes before the job row was written
    snowflake = discord.utils.time_snowflake(issued)
    record = job(interaction_id=snowflake)
    assert abs(token_issued_at(record) - issued) < timedelta(seconds=1)
    assert not token_usable(record, NOW + timedelta(minutes=5))  # 15 min after the click, 5 after queueing
    # An id that is not a real snowflake (years off) is ignored: queued_at is used.
    assert token_issued_at(job(interaction_id=12345)) == NOW


def test_parameters_block_lists_every_seed() -> None:
    text = parameters_text(job())
    assert text.startswith("Job `42`") and "```" in text
    assert "Seed: 7" in text and "Seed: 8" in text and "Negative prompt: blurry" in text
    assert len(text) <= 2000


def test_embed_carries_the_parameters() -> None:
    embed = job_embed(job(status="done"), model="tiny", elapsed_seconds=3.0)
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Seeds"] == "7–8" and fields["Steps"] == "2" and fields["Size"] == "64×64"
    assert fields["Sampler"] == "Euler a" and fields["Model"] == "tiny"
    assert "42" in embed.footer.text and "<@3>" in (embed.description or "")


class FakeHandle:
    job_id = "42"

    def __init__(self, steps: int, preview: bytes | None = None) -> None:
        self.steps, self.preview = steps, preview

    async def progress(self):  # noqa: ANN201 - an async generator of Progress
        from generation.worker import Progress

        for step in range(1, self.steps + 1):
            yield Progress(step, self.steps, self.preview)


class FakeInteraction:
    filesize_limit = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.edits: list[dict] = []

    async def edit_original_response(self, **kwargs) -> None:  # noqa: ANN003
        self.edits.append(kwargs)


def make_delivery(progress_edit_seconds: float):  # noqa: ANN201
    from types import SimpleNamespace

    from bot.config import settings_from_mapping
    from bot.discord.delivery import Delivery

    settings = settings_from_mapping({"discord": {"progress_edit_seconds": progress_edit_seconds}}, environ={})
    worker = SimpleNamespace(position=lambda job_id: 2, estimate_seconds=lambda job_id: 30.0)
    return Delivery(SimpleNamespace(spawn=None), SimpleNamespace(settings=settings, worker=worker))


@pytest.mark.parametrize(("every", "expected"), [(0.0, 1 + 10), (3600.0, 1 + 1)])
async def test_progress_edits_are_throttled(every: float, expected: int) -> None:
    from bot.discord.delivery import Watched

    delivery = make_delivery(every)
    interaction = FakeInteraction()
    watched = Watched(42, interaction, delivery.size_limit_for(interaction))
    await delivery._progress(watched, FakeHandle(10, preview=b"\x89PNG tiny"))
    contents = [edit["content"] for edit in interaction.edits]
    assert len(contents) == expected
    assert contents[0].startswith("Queued — position 2")
    assert contents[-1].startswith("Generating — step 10/10")  # the last step is always shown
    assert interaction.edits[-1]["attachments"][0].filename == "preview.png"
    assert watched.size_limit == 8 * 1024 * 1024


async def test_no_progress_edit_after_the_final_one() -> None:
    from bot.discord.delivery import Watched

    delivery = make_delivery(0.0)
    interaction = FakeInteraction()
    watched = Watched(42, interaction, 1024)
    await delivery.edit_status(watched, final=True, content="Done.")
    assert not await delivery.edit_status(watched, content="Generating — step 3/10")
    assert [e["content"] for e in interaction.edits] == ["Done."]
    assert make_delivery(0.0).size_limit_for(None) == 10 * 1024 * 1024
