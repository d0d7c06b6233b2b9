"""Persistent buttons: the job id travels in the custom_id and is parsed back after a restart."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import discord
import pytest

from bot.discord.views import (
    DYNAMIC_ITEMS,
    DeleteButton,
    ParamsButton,
    RerunButton,
    can_delete,
    custom_id,
    result_view,
)
from tests.helpers import job_record

JOB = job_record(
    id=42, guild_id=1, channel_id=2, user_id=3, interaction_id=None, interaction_token=None, application_id=None,
    message_id=None, prompt="a cat", negative_prompt="", seed=7, steps=2, guidance=7.5, width=64, height=64,
    count=1, scheduler="euler", model="tiny", status="done", error=None, parent_job_id=None,
    queued_at=datetime(2026, 1, 1, tzinfo=UTC), started_at=None, finished_at=None,
)


@pytest.mark.parametrize("action", ["rerun", "delete", "params"])
def test_custom_id_round_trip(action: str) -> None:
    value = custom_id(action, 1234567890123)
    assert len(value) <= 100  # Discord's custom_id limit
    [matched] = [cls for cls in DYNAMIC_ITEMS if cls.__discord_ui_compiled_template__.fullmatch(value)]
    assert matched.action == action
    assert int(matched.__discord_ui_compiled_template__.fullmatch(value)["job_id"]) == 1234567890123


@pytest.mark.parametrize("value", ["", "imagine:rerun:", "imagine:rerun:abc", "imagine:zap:1", "other:rerun:1",
                                   "imagine:rerun:1:extra", "imagine:rerun:12345678901234567890123"])
def test_foreign_or_broken_ids_are_ignored(value: str) -> None:
    assert not any(cls.__discord_ui_compiled_template__.fullmatch(value) for cls in DYNAMIC_ITEMS)


def test_dynamic_templates_match_only_their_action() -> None:
    templates = {cls: cls.__discord_ui_compiled_template__ for cls in DYNAMIC_ITEMS}
    assert set(templates) == {RerunButton, DeleteButton, ParamsButton}
    assert templates[RerunButton].fullmatch("imagine:rerun:42")["job_id"] == "42"
    assert templates[RerunButton].fullmatch("imagine:delete:42") is None
    assert templates[DeleteButton].fullmatch("imagine:delete:42")
    assert templates[ParamsButton].fullmatch("imagine:params:42")


def test_result_view_has_three_persistent_buttons() -> None:
    view = result_view(42)
    assert view.timeout is None and view.is_persistent()
    ids = [item.custom_id for item in view.children]
    assert ids == ["imagine:rerun:42", "imagine:delete:42", "imagine:params:42"]


def test_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        custom_id("explode", 1)


def test_delete_is_for_the_requester_or_manage_messages() -> None:
    nobody = discord.Permissions.none()
    assert can_delete(JOB, JOB.user_id, nobody)
    assert not can_delete(JOB, 99, nobody)
    assert not can_delete(JOB, 99, None)
    assert can_delete(JOB, 99, discord.Permissions(manage_messages=True))
    assert can_delete(dataclasses.replace(JOB, user_id=5), 99, discord.Permissions(administrator=True))
