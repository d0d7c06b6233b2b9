"""A member's own jobs: /history, /job, /cancel, /queue. Every answer is ephemeral (it is about them)."""

from __future__ import annotations

import io
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord import formatting
from bot.storage import repository
from bot.storage.images import read_image
from bot.storage.records import UNFINISHED, JobRecord
from bot.text import MESSAGE_CONTENT_LIMIT, discord_timestamp, truncate

log = logging.getLogger(__name__)

HISTORY_LIMIT = 10
STATUS_ICONS = {"queued": "⏳", "running": "⚙️", "done": "✅", "failed": "❌", "refused": "🚫", "cancelled": "✖️"}


def message_link(job: JobRecord) -> str | None:
    if job.message_id is None:
        return None
    return f"https://discord.com/channels/{job.guild_id or '@me'}/{job.channel_id}/{job.message_id}"


def history_lines(jobs: list[JobRecord]) -> str:
    """One line per job: icon, id, when, prompt excerpt, link to the result when there is one."""
    if not jobs:
        return "You have no jobs here yet. Try `/imagine`."
    lines = []
    for job in jobs:
        prompt = truncate(" ".join(job.prompt.split()), 60)
        link = message_link(job)
        when = discord_timestamp(job.queued_at, "R")
        suffix = f" — [result]({link})" if link else (f" — {job.status}" if job.status != "done" else "")
        lines.append(f"{STATUS_ICONS.get(job.status, '•')} `{job.id}` {when} {discord.utils.escape_markdown(prompt)}"
                     f"{suffix}")
    return truncate("\n".join(lines), MESSAGE_CONTENT_LIMIT)


def queue_text(lines: list[str]) -> str:
    """The /queue answer: whole lines only, within Discord's 2,000 characters (a member may queue many jobs)."""
    text = "\n".join(lines)
    if len(text) <= MESSAGE_CONTENT_LIMIT:
        return text
    kept: list[str] = []
    for index, line in enumerate(lines):
        more = f"… and {len(lines) - index} more"
        if len("\n".join([*kept, line, more])) > MESSAGE_CONTENT_LIMIT:
            return truncate("\n".join([*kept, more]), MESSAGE_CONTENT_LIMIT)
        kept.append(line)
    return truncate(text, MESSAGE_CONTENT_LIMIT)


def pick_job_to_cancel(jobs: list[JobRecord]) -> JobRecord | None:
    """The member's newest unfinished job (``jobs`` come newest first)."""
    return next((job for job in jobs if job.status in UNFINISHED), None)


class Jobs(commands.Cog):
    def __init__(self, bot: Any) -> None:
        self.bot = bot
        self.services = bot.services

    @app_commands.command(name="history", description="Your most recent jobs in this server")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        jobs = await repository.jobs_for_user(self.services.db, interaction.guild_id, interaction.user.id,
                                              limit=HISTORY_LIMIT)
        await interaction.edit_original_response(content=history_lines(jobs))

    @app_commands.command(name="job", description="Show a job again, with its parameters")
    @app_commands.guild_only()
    @app_commands.describe(job_id="the job number (from the result's footer or /history)")
    async def job(self, interaction: discord.Interaction, job_id: app_commands.Range[int, 1]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await repository.get_job(self.services.db, job_id)
        if job is None or job.guild_id != interaction.guild_id:
            await interaction.edit_original_response(content=f"There is no job `{job_id}` in this server.")
            return
        files: list[discord.File] = []
        if job.status == "done":
            for image in await repository.images_for_job(self.services.db, job.id):
                if image.pruned or image.nsfw:
                    continue
                try:
                    data = await read_image(self.services.images_dir, image)
                except OSError:
                    continue
                limit = self.bot.delivery.size_limit_for(interaction)
                if len(data) <= limit:
                    files.append(discord.File(io.BytesIO(data), filename=f"imagine-{job.id}-{image.index}.png"))
        status = f"Status: **{job.status}**" + (f" — {job.error}" if job.error else "")
        link = message_link(job)
        content = truncate(
            "\n".join([status] + ([f"Posted: {link}"] if link else []) + [formatting.parameters_text(job)]),
            MESSAGE_CONTENT_LIMIT)
        await interaction.edit_original_response(content=content, embed=formatting.job_embed(job), attachments=files)

    @app_commands.command(name="cancel", description="Cancel your latest unfinished job (or the one you name)")
    @app_commands.guild_only()
    @app_commands.describe(job_id="the job to cancel (default: your latest unfinished job)")
    async def cancel(self, interaction: discord.Interaction,
                     job_id: app_commands.Range[int, 1] | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        db = self.services.db
        if job_id is None:
            job = pick_job_to_cancel(await repository.jobs_for_user(db, interaction.guild_id, interaction.user.id,
                                                                    limit=50))
            if job is None:
                await interaction.edit_original_response(content="You have no unfinished job to cancel.")
                return
        else:
            job = await repository.get_job(db, job_id)
            if job is None or job.guild_id != interaction.guild_id:
                await interaction.edit_original_response(content=f"There is no job `{job_id}` in this server.")
                return
            permissions = interaction.permissions
            if job.user_id != interaction.user.id and not permissions.manage_messages:
                await interaction.edit_original_response(
                    content="You can only cancel your own jobs (or any job with Manage Messages).")
                return
        if job.status not in UNFINISHED:
            await interaction.edit_original_response(content=f"Job `{job.id}` already ended ({job.status}).")
            return
        cancelled = await self.services.journal.cancel(job.id)
        log.info("cancel requested", extra={"job": job.id, "by": interaction.user.id, "cancelled": cancelled})
        text = f"Job `{job.id}` cancelled." if cancelled else f"Job `{job.id}` could not be cancelled (it just ended)."
        await interaction.edit_original_response(content=text)

    @app_commands.command(name="queue", description="How long the queue is, and where your jobs are in it")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction) -> None:
        worker = self.services.worker
        lines = [f"Jobs waiting: **{worker.queued_count}** (queue holds {worker.queue_size})."]
        mine = worker.jobs_of(str(interaction.user.id))
        for worker_job_id in mine:
            position = worker.position(worker_job_id)
            estimate = worker.estimate_seconds(worker_job_id)
            lines.append(f"• job `{worker_job_id}`: {formatting.queued_message(position, estimate)}")
        if not mine:
            lines.append("You have no jobs waiting or running.")
        await interaction.response.send_message(queue_text(lines), ephemeral=True)


async def setup(bot: Any) -> None:
    await bot.add_cog(Jobs(bot))
