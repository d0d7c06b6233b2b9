"""Persistent buttons: the job id (and the image) travels in the custom_id and is parsed back after a restart;
the layout stays within Discord's component limits."""

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
    UpscaleButton,
    VaryStrongButton,
    VarySubtleButton,
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


@pytest.mark.parametrize("action", ["upscale", "vary_subtle", "vary_strong"])
@pytest.mark.parametrize("index", [0, 3])
def test_image_custom_id_round_trip(action: str, index: int) -> None:
    value = custom_id(action, 1234567890123456789, index)
    assert len(value) <= 100
    [matched] = [cls for cls in DYNAMIC_ITEMS if cls.__discord_ui_compiled_template__.fullmatch(value)]
    assert matched.action == action
    found = matched.__discord_ui_compiled_template__.fullmatch(value)
    assert (int(found["job_id"]), int(found["index"])) == (1234567890123456789, index)


@pytest.mark.parametrize("value", ["", "imagine:rerun:", "imagine:rerun:abc", "imagine:zap:1", "other:rerun:1",
                                   "imagine:rerun:1:extra", "imagine:rerun:12345678901234567890123",
                                   "imagine:upscale:1", "imagine:upscale:1:", "imagine:upscale:1:12",
                                   "imagine:vary:1:0", "imagine:vary_subtle:x:0"])
def test_foreign_or_broken_ids_are_ignored(value: str) -> None:
    assert not any(cls.__discord_ui_compiled_template__.fullmatch(value) for cls in DYNAMIC_ITEMS)


def test_dynamic_templates_match_only_their_action() -> None:
    templates = {cls: cls.__discord_ui_compiled_template__ for cls in DYNAMIC_ITEMS}
    assert set(templates) == {RerunButton, DeleteButton, ParamsButton, UpscaleButton, VarySubtleButton,
                              VaryStrongButton}
    assert templates[RerunButton].fullmatch("imagine:rerun:42")["job_id"] == "42"
    assert templates[RerunButton].fullmatch("imagine:delete:42") is None
    assert templates[DeleteButton].fullmatch("imagine:delete:42")
    assert templates[ParamsButton].fullmatch("imagine:params:42")
    assert templates[UpscaleButton].fullmatch("imagine:upscale:42:1")["index"] == "1"
    assert templates[VarySubtleButton].fullmatch("imagine:vary_strong:42:1") is None
    assert templates[VaryStrongButton].fullmatch("imagine:vary_strong:42:1")


def _rows(view) -> list[list[tuple[str, str]]]:  # noqa: ANN001
    """(label, custom_id) per action row, as discord.py will send them."""
    return [[(c["label"], c["custom_id"]) for c in row["components"]] for row in view.to_components()]


def test_one_image_gets_upscale_and_both_variations_then_the_job_buttons() -> None:
    view = result_view(42)
    assert view.timeout is None and view.is_persistent()
    assert _rows(view) == [
        [("Upscale", "imagine:upscale:42:0"), ("Vary (Subtle)", "imagine:vary_subtle:42:0"),
         ("Vary (Strong)", "imagine:vary_strong:42:0")],
        [("Rerun", "imagine:rerun:42"), ("Delete", "imagine:delete:42"), ("Parameters", "imagine:params:42")],
    ]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_several_images_get_u_and_v_per_image(count: int) -> None:
    rows = _rows(result_view(7, count))
    assert rows[0] == [(f"U{i + 1}", f"imagine:upscale:7:{i}") for i in range(count)]
    assert rows[1] == [(f"V{i + 1}", f"imagine:vary_subtle:7:{i}") for i in range(count)]  # subtle by default
    assert [label for label, _ in rows[2]] == ["Rerun", "Delete", "Parameters"]


def test_extra_items_come_after_and_everything_stays_within_discords_limits() -> None:
    extra = [discord.ui.Button(label=f"Submit #{i + 1}", custom_id=f"contest:submit:7:{i}") for i in range(4)]
    view = result_view(7, 4, extra)
    rows = view.to_components()
    assert len(rows) <= 5 and all(len(row["components"]) <= 5 for row in rows)
    assert [c["label"] for c in rows[3]["components"]] == ["Submit #1", "Submit #2", "Submit #3", "Submit #4"]
    ids = [c["custom_id"] for row in rows for c in row["components"]]
    assert len(ids) == len(set(ids)) == 15 and all(len(i) <= 100 for i in ids)
    assert all(len(c["label"]) <= 80 for row in rows for c in row["components"])
    with pytest.raises(ValueError, match="do not fit"):
        result_view(7, 4, [discord.ui.Button(label=str(i), custom_id=str(i)) for i in range(11)])


def test_unknown_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        custom_id("explode", 1)
    with pytest.raises(ValueError):
        custom_id("upscale", 1)  # an image action needs its image
    with pytest.raises(ValueError):
        custom_id("rerun", 1, 0)


def test_delete_is_for_the_requester_or_manage_messages() -> None:
    nobody = discord.Permissions.none()
    assert can_delete(JOB, JOB.user_id, nobody)
    assert not can_delete(JOB, 99, nobody)
    assert not can_delete(JOB, 99, None)
    assert can_delete(JOB, 99, discord.Permissions(manage_messages=True))
    assert can_delete(dataclasses.replace(JOB, user_id=5), 99, discord.Permissions(administrator=True))
