"""The gate every job passes (/imagine, Rerun button, 🔄 reaction), with the real storage, filter and limiter.

The generation worker is real but not started, so accepted jobs simply stay queued: no model is needed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.config import settings_from_mapping
from bot.contests.service import ContestService
from bot.gate.content_filter import ContentFilter
from bot.gate.rate_limits import RateLimiter
from bot.gate.submission import Accepted, Options, Origin, Refusal, submit
from bot.journal.job_journal import JobJournal
from bot.services import ModelInfo, Services
from bot.storage import repository
from bot.storage.db import Database
from bot.storage.records import GuildSettingsRecord
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
        "content_filter": {"blocked_terms": ["forbidden word"], "regex_rules": [],
                           "negative_prompt_terms": ["clothes"]},
    }, environ={})
    db = Database.connect(settings.database.url)
    await db.create_all()
    worker = GenerationWorker(NeverRuns(), queue_size=settings.generation.queue_size, max_batch_size=4)
    services = Services(
        settings=settings, db=db, model=ModelInfo("tiny"), worker=worker,
        journal=JobJournal(db, worker, tmp_path / "images", "tiny"),
        content_filter=ContentFilter.from_settings(settings.content_filter),
        rate_limiter=RateLimiter(db, settings.rate_limits), images_dir=tmp_path / "images",
        contests=ContestService(db, images_dir=tmp_path / "images"),
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


async def test_negative_prompt_is_checked_only_for_its_own_terms(services: Services) -> None:
    # A blocked term in the negative prompt keeps it out of the image: that is allowed.
    kept_out = await submit(services.gate, Options.of(prompt="a cat", negative_prompt="forbidden words, nsfw"), ORIGIN)
    assert isinstance(kept_out, Accepted)
    refused = await submit(services.gate, Options.of(prompt="a cat", negative_prompt="blurry, CL0THES"), ORIGIN)
    assert isinstance(refused, Refusal) and refused.kind == "filtered"
    assert "negative prompt" in refused.message and "clothes" not in refused.message.lower()
    [event] = await repository.moderation_events(services.db, 10)
    assert (event.prompt_excerpt, event.rule) == ("blurry, CL0THES", "negative_term:clothes")


async def switch_rules(db: Database, guild_id: int, enabled: bool | None) -> GuildSettingsRecord:
    return await repository.update_guild_settings(db, guild_id, default_filter_rules=enabled)


async def test_shipped_rules_apply_unless_the_server_switches_them_off(services: Services) -> None:
    refused = await submit(services.gate, Options.of(prompt="a sexy ch1ld"), ORIGIN)
    assert isinstance(refused, Refusal) and refused.kind == "filtered"
    assert isinstance(await submit(services.gate, Options.of(prompt="a child's birthday cake"), ORIGIN), Accepted)
    # A minor in the prompt and clothes in the negative prompt undress the subject.
    undressed = await submit(services.gate, Options.of(prompt="a child in a park", negative_prompt="clothing"), ORIGIN)
    assert isinstance(undressed, Refusal) and undressed.kind == "filtered"

    assert (await switch_rules(services.db, 10, False)).default_filter_rules is False
    assert isinstance(await submit(services.gate, Options.of(prompt="a sexy ch1ld"), ORIGIN), Accepted)
    other_guild = await submit(services.gate, Options.of(prompt="a sexy ch1ld"),
                               dataclasses.replace(ORIGIN, guild_id=11))
    assert isinstance(other_guild, Refusal)
    assert (await switch_rules(services.db, 10, None)).default_filter_rules is None  # back to the config's choice
    assert isinstance(await submit(services.gate, Options.of(prompt="a sexy ch1ld"), ORIGIN), Refusal)


async def test_server_switch_keeps_its_blocked_terms(services: Services) -> None:
    await repository.add_blocked_terms(services.db, 10, ["purple"])
    settings = await switch_rules(services.db, 10, False)
    assert settings.blocked_terms == ("purple",)
    assert (await repository.get_guild_settings(services.db, 10)).blocked_terms == ("purple",)
    assert isinstance(await submit(services.gate, Options.of(prompt="a purple cat"), ORIGIN), Refusal)
    fresh = await switch_rules(services.db, 12, True)  # a server never configured before
    assert (fresh.blocked_terms, fresh.default_filter_rules) == ((), True)


async def test_the_filter_runs_off_the_event_loop(services: Services) -> None:
    threads: list[int] = []

    class RecordingFilter(ContentFilter):
        def check_request(self, *args: object, **kwargs: object) -> object:
            threads.append(threading.get_ident())
            return super().check_request(*args, **kwargs)

    services = dataclasses.replace(services, content_filter=RecordingFilter(["forbidden word"]))
    assert isinstance(await submit(services.gate, Options.of(prompt="a cat"), ORIGIN), Accepted)
    assert isinstance(await submit(services.gate, Options.of(prompt="forbidden word"), ORIGIN), Refusal)
    assert len(threads) == 2 and threading.get_ident() not in threads


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
