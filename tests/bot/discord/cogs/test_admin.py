"""Admin gate and the global error handler: every failure is answered, ephemerally, without a traceback."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands

from bot.discord.client import ImagineTree, bot_intents, describe_check_failure
from bot.discord.cogs.admin import admin_check, is_admin
from bot.discord.cogs.jobs import history_lines, pick_job_to_cancel
from bot.discord.replies import APOLOGY
from tests.helpers import job_record

JOB = job_record(
    id=42, guild_id=1, channel_id=2, user_id=3, interaction_id=None, interaction_token=None, application_id=None,
    message_id=None, prompt="a cat", negative_prompt="", seed=7, steps=2, guidance=7.5, width=64, height=64,
    count=1, scheduler="euler", model="tiny", status="done", error=None, parent_job_id=None,
    queued_at=datetime(2026, 1, 1, tzinfo=UTC), started_at=None, finished_at=None,
)


class FakeResponse:
    def __init__(self, done: bool, kind: discord.InteractionResponseType | None = None) -> None:
        self.done = done
        self.type = kind
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def is_done(self) -> bool:
        return self.done

    async def send_message(self, content: str, **kwargs: Any) -> None:
        self.sent.append((content, kwargs))
        self.done = True


class FakeFollowup:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, content: str, **kwargs: Any) -> None:
        self.sent.append((content, kwargs))


def interaction(permissions: discord.Permissions | None = None, *, guild_id: int | None = 1,
                done: bool = False, kind: discord.InteractionResponseType | None = None) -> Any:
    edits: list[dict[str, Any]] = []

    async def edit_original_response(**kwargs: Any) -> None:
        edits.append(kwargs)

    return SimpleNamespace(
        id=5, guild_id=guild_id, permissions=permissions or discord.Permissions.none(),
        user=SimpleNamespace(id=7), command=SimpleNamespace(qualified_name="settings show"),
        response=FakeResponse(done, kind), followup=FakeFollowup(), edits=edits,
        edit_original_response=edit_original_response,
    )


def test_intents_are_not_privileged() -> None:
    intents = bot_intents()
    assert intents.guilds and intents.guild_reactions
    assert not (intents.members or intents.presences or intents.message_content)


def test_is_admin_needs_manage_server() -> None:
    assert is_admin(discord.Permissions(manage_guild=True))
    assert is_admin(discord.Permissions(administrator=True))
    assert not is_admin(discord.Permissions(manage_messages=True, ban_members=True))
    assert not is_admin(None)


def test_admin_check_raises_for_members_and_passes_admins() -> None:
    assert admin_check(interaction(discord.Permissions(manage_guild=True)))
    with pytest.raises(app_commands.MissingPermissions) as info:
        admin_check(interaction(discord.Permissions(send_messages=True)))
    assert info.value.missing_permissions == ["manage_guild"]
    with pytest.raises(app_commands.NoPrivateMessage):
        admin_check(interaction(guild_id=None))


def test_check_failures_read_well() -> None:
    text = describe_check_failure(app_commands.MissingPermissions(["manage_guild"]))
    assert text == "You need the **Manage Server** permission to use this command."
    assert describe_check_failure(app_commands.NoPrivateMessage()) == "This command only works in a server."
    assert describe_check_failure(app_commands.CommandInvokeError.__new__(app_commands.CommandInvokeError)) is None


@pytest.fixture
def tree() -> ImagineTree:
    client = discord.Client(intents=bot_intents())
    return ImagineTree(client)


async def test_denial_is_ephemeral(tree: ImagineTree) -> None:
    fake = interaction()
    await tree.on_error(fake, app_commands.MissingPermissions(["manage_guild"]))
    [(content, kwargs)] = fake.response.sent
    assert "Manage Server" in content and kwargs["ephemeral"] is True


async def test_unexpected_error_apologises_and_logs_traceback(tree: ImagineTree,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    fake = interaction(done=True)  # already deferred: the apology goes through the followup
    try:
        raise ZeroDivisionError("secret internals")
    except ZeroDivisionError as exc:
        error = app_commands.CommandInvokeError(SimpleNamespace(name="x", qualified_name="x"), exc)
    with caplog.at_level(logging.ERROR, logger="bot.discord.client"):
        await tree.on_error(fake, error)
    [(content, kwargs)] = fake.followup.sent
    assert content == APOLOGY and kwargs["ephemeral"] is True and "secret" not in content
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text


async def test_deferred_interaction_gets_its_placeholder_replaced(tree: ImagineTree) -> None:
    fake = interaction(done=True, kind=discord.InteractionResponseType.deferred_channel_message)
    await tree.on_error(fake, app_commands.MissingPermissions(["manage_guild"]))
    assert not fake.followup.sent and "Manage Server" in fake.edits[0]["content"]


def test_history_and_cancel_pick() -> None:
    assert "no jobs" in history_lines([])
    done = dataclasses.replace(JOB, id=3, status="done", message_id=9)
    queued = dataclasses.replace(JOB, id=2, status="queued")
    running = dataclasses.replace(JOB, id=1, status="running")
    text = history_lines([done, queued])
    assert "`3`" in text and "https://discord.com/channels/1/2/9" in text and "queued" in text
    assert pick_job_to_cancel([done, queued, running]) is queued
    assert pick_job_to_cancel([done]) is None
