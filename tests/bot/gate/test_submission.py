"""The gate every job passes (/imagine, Rerun button, 🔄 reaction), with the real storage, filter and limiter.

The generation worker is real but not started, so accepted jobs simply stay queued: no model is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.config import settings_from_mapping
from bot.contests.service import build_contest_service
from bot.gate.content_filter import ContentFilter
from bot.gate.rate_limits import RateLimiter
from bot.gate.submission import Accepted, Options, Origin, Refusal, submit
from bot.journal.job_journal import JobJournal
from bot.services import ModelInfo, Services
from bot.storage import repository
from bot.storage.db import Database
from generation.worker import GenerationWorker

pytestmark = pytest.mark.timeout(60)


class NeverRuns:
    """A BatchEngine that is never asked to generate (the worker is not started)."""

    def batch_key(self, request):  # noqa: ANN001, ANN201
        return ()


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = settings_from_mapping({
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"},
        "storage": {"images_dir": str(tmp_path / "images")},
        "generation": {"model": "tiny", "queue_size": 2, "max_steps": 30},
        "rate_limits": {"images_per_window": 5, "window_seconds": 3600, "max_queued_per_user": 3},
        "content_filter": {"blocked_terms": ["forbidden word"], "regex_rules": []},
    }, environ={})
    db = Database.connect(settings.database.url)
    await db.create_all()
    worker = GenerationWorker(NeverRuns(), queue_size=settings.generation.queue_size, max_batch_size=4)
    services = Services(
        settings=settings, db=db, model=ModelInfo("tiny"), worker=worker,
        journal=JobJournal(db, worker, tmp_path / "images", "tiny"),
        content_filter=ContentFilter(settings.content_filter.blocked_terms),
        rate_limiter=RateLimiter(db, settings.rate_limits), images_dir=tmp_path / "images",
        contests=build_contest_service(db, content_filter=None, images_dir=tmp_path / "images"),
    )
    yield services
    await services.close()


ORIGIN = Origin(user_id=30, channel_id=20, guild_id=10, interaction_id=40, interaction_token="tok",
                application_id=50)


async def test_accepted_job_is_journalled_with_its_origin(services: Services) -> None:
    outcome = await submit(services.gate, Options.of(prompt="a red cube", seed=5, count=2, steps=3), ORIGIN)
    assert isinstance(outcome, Accepted)
    job = await repository.get_job(services.db, outcome.job.id)
    assert (job.status, job.params.seed, job.params.count, job.params.steps) == ("queued", 5, 2, 3)
    assert job.interaction_token == "tok"
    assert services.worker.position(outcome.handle.job_id) == 1
    usage = await services.rate_limiter.usage(10, 30)
    assert usage.used == 2 and usage.queued == 1


async def test_invalid_options_get_the_validation_message(services: Services) -> None:
    outcome = await submit(services.gate, Options.of(prompt="a cat", steps=31), ORIGIN)
    assert isinstance(outcome, Refusal) and outcome.kind == "invalid"
    assert "steps" in outcome.message and "30" in outcome.message
    assert (await services.rate_limiter.usage(10, 30)).used == 0  # nothing reserved


@pytest.mark.parametrize("prompt", ["a F0rbidden-Word here", "x f o r b i d d e n w o r d"])
async def test_global_term_is_refused_without_echo_and_recorded(services: Services, prompt: str) -> None:
    outcome = await submit(services.gate, Options.of(prompt=prompt), ORIGIN)
    assert isinstance(outcome, Refusal) and outcome.kind == "filtered"
    assert "forbidden" not in outcome.message.lower()
    assert "term" in outcome.message  # the category, not the term
    [event] = await repository.moderation_events(services.db, 10)
    assert event.user_id == 30 and event.source == "imagine" and event.rule.endswith("forbidden word")
    assert (await services.rate_limiter.usage(10, 30)).used == 0


async def test_guild_terms_apply_only_in_their_guild(services: Services) -> None:
    await repository.add_blocked_terms(services.db, 10, ["purple"])
    refused = await submit(services.gate, Options.of(prompt="a purple cat"), ORIGIN)
    assert isinstance(refused, Refusal) and refused.kind == "filtered"
    elsewhere = await submit(services.gate, Options.of(prompt="a purple cat"), dataclasses.replace(ORIGIN, guild_id=11))
    assert isinstance(elsewhere, Accepted)


async def test_negative_prompt_is_filtered_too(services: Services) -> None:
    outcome = await submit(services.gate, Options.of(prompt="a cat", negative_prompt="forbidden words"), ORIGIN)
    assert isinstance(outcome, Refusal) and outcome.kind == "filtered"


async def test_rate_limit_refusal_has_a_relative_timestamp(services: Services) -> None:
    assert isinstance(await submit(services.gate, Options.of(prompt="one", count=4), ORIGIN), Accepted)
    outcome = await submit(services.gate, Options.of(prompt="two", count=2), ORIGIN)
    assert isinstance(outcome, Refusal) and outcome.kind == "rate_limited"
    assert outcome.retry_at is not None and outcome.retry_at > datetime.now(UTC)
    assert f"<t:{int(outcome.retry_at.timestamp())}:R>" in outcome.message


async def test_queue_full_releases_the_reservation(services: Services) -> None:
    for user in (1, 2):  # queue_size is 2
        origin = dataclasses.replace(ORIGIN, user_id=user)
        assert isinstance(await submit(services.gate, Options.of(prompt="x"), origin), Accepted)
    outcome = await submit(services.gate, Options.of(prompt="x", count=3), ORIGIN)
    assert isinstance(outcome, Refusal) and outcome.kind == "queue_full"
    assert "queue is full" in outcome.message.lower()
    usage = await services.rate_limiter.usage(10, 30)
    assert usage.used == 0 and usage.queued == 0  # given back
    [refused] = await repository.jobs_for_user(services.db, 10, 30)
    assert refused.status == "refused"


async def test_rerun_keeps_parameters_with_a_new_seed(services: Services) -> None:
    first = await submit(services.gate, Options.of(prompt="a cat", seed=1, steps=4, width=320, height=256,
                                           scheduler="ddim", negative_prompt="dog"), ORIGIN)
    assert isinstance(first, Accepted)
    rerun = await submit(services.gate, Options.rerun_of(first.job),
                         dataclasses.replace(ORIGIN, parent_job_id=first.job.id, source="reaction",
                                             interaction_token=None, interaction_id=None))
    assert isinstance(rerun, Accepted)
    child = rerun.job
    assert child.parent_job_id == first.job.id and child.interaction_token is None
    same = ("prompt", "negative_prompt", "steps", "width", "height", "scheduler", "guidance", "count")
    assert all(getattr(child.params, name) == getattr(first.job.params, name) for name in same)
    assert "seed" not in Options.rerun_of(first.job).values
