"""Persistent buttons under every result: 🔄 Rerun, 🗑 Delete, ℹ Parameters.

They are :class:`discord.ui.DynamicItem` s whose ``custom_id`` carries the job id (``imagine:rerun:42``), so a
click is understood from the id alone: no in-memory view per message, and buttons on messages posted before a
restart keep working. The callbacks are thin: the work lives in the cogs and :mod:`bot.discord.delivery`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.discord.formatting import parameters_text
from bot.discord.replies import APOLOGY, answer
from bot.storage import repository

if TYPE_CHECKING:
    from bot.storage.records import JobRecord

log = logging.getLogger(__name__)

PREFIX = "imagine"
ACTIONS = ("rerun", "delete", "params")


def custom_id(action: str, job_id: int) -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown button action {action!r}")
    return f"{PREFIX}:{action}:{int(job_id)}"


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

    async def run(self, interaction: discord.Interaction, job: JobRecord) -> None:
        cog = interaction.client.get_cog("Imagine")  # type: ignore[attr-defined]
        await cog.rerun_from_button(interaction, job)


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


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (RerunButton, DeleteButton, ParamsButton)


def result_view(job_id: int) -> discord.ui.View:
    """The buttons under a result; fully dynamic, so discord.py keeps no per-message state for them."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerunButton(job_id))
    view.add_item(DeleteButton(job_id))
    view.add_item(ParamsButton(job_id))
    return view
