"""Persistent buttons under every result: Upscale / Vary (one image) or U1-U4 / V1-V4 (several), then 🔄 Rerun,
🗑 Delete, ℹ Parameters.

They are :class:`discord.ui.DynamicItem` s whose ``custom_id`` carries the job id and, for Upscale and Vary, the
image (``imagine:rerun:42``, ``imagine:upscale:42:1``), so a click is understood from the id alone: no in-memory
view per message, and buttons on messages posted before a restart keep working. The callbacks are thin: the work
lives in the cogs and :mod:`bot.discord.delivery`.

Layout within Discord's limits (5 rows of 5 buttons): one image -> [Upscale, Vary (Subtle), Vary (Strong)],
[Rerun, Delete, Parameters]; N > 1 images -> [U1..UN], [V1..VN] (subtle), [Rerun, Delete, Parameters]; what the
cogs add (a contest's Submit buttons) comes in the rows after those.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord

from bot.discord.formatting import parameters_text
from bot.discord.replies import APOLOGY, answer
from bot.gate.submission import DERIVATIONS
from bot.storage import repository

if TYPE_CHECKING:
    from bot.storage.records import JobRecord

log = logging.getLogger(__name__)

PREFIX = "imagine"
ACTIONS = ("rerun", "delete", "params")
ROW_WIDTH = 5  # buttons in one action row
MAX_ROWS = 5  # action rows in one message


def custom_id(action: str, job_id: int, index: int | None = None) -> str:
    """``imagine:rerun:42``; the image actions name the image too: ``imagine:upscale:42:1``."""
    if action in ACTIONS and index is None:
        return f"{PREFIX}:{action}:{int(job_id)}"
    if action in DERIVATIONS and index is not None and 0 <= index <= 9:
        return f"{PREFIX}:{action}:{int(job_id)}:{int(index)}"
    raise ValueError(f"unknown button action {action!r} (image index {index!r})")


def can_delete(job: JobRecord, user_id: int, permissions: discord.Permissions | None) -> bool:
    """The requester, or anyone allowed to manage messages in that channel."""
    return user_id == job.user_id or bool(permissions and (permissions.manage_messages or permissions.administrator))


class _JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"$^"):
    """Shared plumbing: the job id from the custom_id, and callbacks that always answer the interaction."""

    action = ""

    def __init__(self, job_id: int, button: discord.ui.Button[Any]) -> None:
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _JobButton:
        return cls(int(match["job_id"]))  # type: ignore[call-arg]

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            # Acknowledge before touching the database: Discord wants an answer within 3 s.
            await interaction.response.defer(ephemeral=True, thinking=True)
            job = await repository.get_job(interaction.client.services.db, self.job_id)  # type: ignore[attr-defined]
            if job is None:
                await answer(interaction, "I no longer know that job.")
                return
            await self.run(interaction, job)
        except Exception:
            log.exception("button %s for job %s failed", self.action, self.job_id)
            await answer(interaction, APOLOGY)

    async def run(self, interaction: discord.Interaction, job: JobRecord) -> None:
        raise NotImplementedError


class RerunButton(_JobButton, template=rf"{PREFIX}:rerun:(?P<job_id>[0-9]{{1,19}})"):
    """Same prompt and parameters, a new random seed; through the same filter and limits as /imagine."""

    action = "rerun"

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, discord.ui.Button(
            label="Rerun", emoji="🔄", style=discord.ButtonStyle.primary, custom_id=custom_id("rerun", job_id)))

    async def callback(self, interaction: discord.Interaction) -> None:
        # Not deferred here: the Imagine cog records the click in its inbox before acknowledging it.
        try:
            cog = interaction.client.get_cog("Imagine")  # type: ignore[attr-defined]
            await cog.rerun_from_button(interaction, self.job_id)
        except Exception:
            log.exception("button %s for job %s failed", self.action, self.job_id)
            await answer(interaction, APOLOGY)


class DeleteButton(_JobButton, template=rf"{PREFIX}:delete:(?P<job_id>[0-9]{{1,19}})"):
    """Deletes the result message: the requester, or members with Manage Messages."""

    action = "delete"

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, discord.ui.Button(
            label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger, custom_id=custom_id("delete", job_id)))

    async def run(self, interaction: discord.Interaction, job: JobRecord) -> None:
        permissions = interaction.permissions if interaction.guild_id else None
        if not can_delete(job, interaction.user.id, permissions):
            await answer(interaction, "Only the member who asked for this image, or a member with Manage Messages, "
                                      "can delete it.")
            return
        if interaction.message is not None:
            with contextlib.suppress(discord.NotFound):
                await interaction.message.delete()
        await repository.set_job_message(interaction.client.services.db, job.id, None)  # type: ignore[attr-defined]
        log.info("result deleted", extra={"job": job.id, "by": interaction.user.id})
        await answer(interaction, "Deleted.")


class ParamsButton(_JobButton, template=rf"{PREFIX}:params:(?P<job_id>[0-9]{{1,19}})"):
    """Shows the full parameters (web-UI style block) only to the member who clicked."""

    action = "params"

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, discord.ui.Button(
            label="Parameters", emoji="ℹ️", style=discord.ButtonStyle.secondary, custom_id=custom_id("params", job_id)))

    async def run(self, interaction: discord.Interaction, job: JobRecord) -> None:
        await answer(interaction, parameters_text(job))


class _ImageButton(_JobButton, template=r"$^"):
    """Upscale or vary one image of the job: a child job through the same gate as /imagine."""

    labels: tuple[str, str] = ("", "")  # (one image, several images: with {n})

    def __init__(self, job_id: int, index: int = 0, count: int = 1) -> None:
        label = self.labels[0] if count == 1 else self.labels[1].format(n=index + 1)
        super().__init__(job_id, discord.ui.Button(label=label, style=discord.ButtonStyle.secondary,
                                                   custom_id=custom_id(self.action, job_id, index)))
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _ImageButton:
        return cls(int(match["job_id"]), int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        # Not deferred here: the Imagine cog records the click in its inbox before acknowledging it, like Rerun.
        try:
            cog = interaction.client.get_cog("Imagine")  # type: ignore[attr-defined]
            await cog.derive_from_button(interaction, self.job_id, self.index, self.action)
        except Exception:
            log.exception("button %s for job %s failed", self.action, self.job_id)
            await answer(interaction, APOLOGY)


_IMAGE_ID = r"(?P<job_id>[0-9]{1,19}):(?P<index>[0-9])"


class UpscaleButton(_ImageButton, template=rf"{PREFIX}:upscale:{_IMAGE_ID}"):
    """The chosen image at ``generation.upscale_factor`` x (hires fix, or the configured upscaler)."""

    action = "upscale"
    labels = ("Upscale", "U{n}")


class VarySubtleButton(_ImageButton, template=rf"{PREFIX}:vary_subtle:{_IMAGE_ID}"):
    """img2img from the chosen image with a new seed at ``vary_subtle_strength``: close to it."""

    action = "vary_subtle"
    labels = ("Vary (Subtle)", "V{n}")


class VaryStrongButton(_ImageButton, template=rf"{PREFIX}:vary_strong:{_IMAGE_ID}"):
    """The same at ``vary_strong_strength``: the composition stays, the details change."""

    action = "vary_strong"
    labels = ("Vary (Strong)", "V{n} (Strong)")


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    RerunButton, DeleteButton, ParamsButton, UpscaleButton, VarySubtleButton, VaryStrongButton)


def _placed(item: discord.ui.Item[Any], row: int) -> discord.ui.Item[Any]:
    item.row = row
    return item


def result_view(job_id: int, count: int = 1, extra: Sequence[discord.ui.Item[Any]] = ()) -> discord.ui.View:
    """The buttons under a result of ``count`` images, then ``extra`` items (the cogs') in the rows after them;
    fully dynamic, so discord.py keeps no per-message state for them. See the module docstring for the layout."""
    if not 1 <= count <= ROW_WIDTH:
        raise ValueError(f"a result has 1 to {ROW_WIDTH} images, not {count}")
    view = discord.ui.View(timeout=None)
    if count == 1:
        image_rows = [[UpscaleButton(job_id), VarySubtleButton(job_id), VaryStrongButton(job_id)]]
    else:
        image_rows = [[UpscaleButton(job_id, i, count) for i in range(count)],
                      [VarySubtleButton(job_id, i, count) for i in range(count)]]
    rows: list[list[discord.ui.Item[Any]]] = [*image_rows, [RerunButton(job_id), DeleteButton(job_id),
                                                              ParamsButton(job_id)]]
    rows += [list(extra[start:start + ROW_WIDTH]) for start in range(0, len(extra), ROW_WIDTH)]
    if len(rows) > MAX_ROWS:
        raise ValueError(f"{len(extra)} extra item(s) do not fit under a result of {count} image(s)")
    for row, items in enumerate(rows):
        for item in items:
            view.add_item(_placed(item, row))
    return view
