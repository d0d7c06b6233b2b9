"""Where a result goes: the interaction webhook while its token is young, else a channel message."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import discord
import pytest

from bot.delivery import TOKEN_USABLE_FOR, job_embed, parameters_text, token_issued_at, token_usable
from bot.storage.records import JobRecord

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def job(**changes) -> JobRecord:
    base = JobRecord(
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
