"""A member's own jobs: /history, /job, /cancel, /queue. Every answer is ephemeral (it is about them).

Who sees what: a member sees their own jobs; a moderator (Manage Messages in the channel asked from) sees the
jobs of their server; nobody sees another server's jobs, or a result its owner deleted or the host pruned.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.clock import utcnow
from bot.discord import formatting
from bot.discord.delivery import TOKEN_LIFETIME
from bot.storage import repository
from bot.storage.images import read_image
from bot.storage.records import UNFINISHED, ImageRecord, JobRecord
from bot.text import MESSAGE_CONTENT_LIMIT, discord_timestamp, truncate

log = logging.getLogger(__name__)

HISTORY_LIMIT = 10
TOKEN_SWEEP_SECONDS = 60.0
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
        prompt = truncate(" ".join(job.params.prompt.split()), 60)
        link = message_link(job)
        when = discord_timestamp(job.queued_at, "R")
        suffix = f" — [result]({link})" if link else (f" — {job.status}" if job.status != "done" else "")
        lines.append(f"{STATUS_ICONS.get(job.status, '•')} `{job.id}` {when} {discord.utils.escape_markdown(prompt)}"
                     f"{suffix}")
    return truncate("\n".join(lines), MESSAGE_CONTENT_LIMIT)


def is_moderator(permissions: discord.Permissions | None) -> bool:
    """Manage Messages in the channel (what lets them delete others' results there anyway)."""
    return bool(permissions is not None and (permissions.manage_messages or permissions.administrator))


def may_see(job: JobRecord, user_id: int, guild_id: int | None, permissions: discord.Permissions | None) -> bool:
    """A member's own job in this server, or any job of this server for a moderator; never another server's."""
    if job.guild_id is None or guild_id is None or job.guild_id != guild_id:
        return False
    return job.user_id == user_id or is_moderator(permissions)


def result_deleted(job: JobRecord, images: list[ImageRecord]) -> bool:
    """The result was posted and its message deleted since (its images keep the message id, the job loses it)."""
    return job.message_id is None and any(image.message_id is not None for image in images)


def pick_job_to_cancel(jobs: list[JobRecord]) -> JobRecord | None:
    """The member's newest unfinished job (``jobs`` come newest first)."""
    return next((job for job in jobs if job.status in UNFINISHED), None)


class Jobs(commands.Cog):
    def __init__(self, bot: Any) -> None:
        self.bot = bot
        self.services = bot.services

    async def cog_load(self) -> None:
        self.forget_expired_tokens.start()

    async def cog_unload(self) -> None:
        self.forget_expired_tokens.cancel()

    @tasks.loop(seconds=TOKEN_SWEEP_SECONDS)
    async def forget_expired_tokens(self) -> None:
        """Interaction tokens older than Discord's 15 minutes open nothing any more: do not keep them (a job
        delivered in time has had its token forgotten by the journal already)."""
        try:
            cleared = await repository.clear_interaction_tokens_queued_before(self.services.db,
                                                                            utcnow() - TOKEN_LIFETIME)
        except Exception:
            log.exception("forgetting expired interaction tokens failed; trying again in a minute")
            return
        if cleared:
            log.info("forgot %d expired interaction token(s)", cleared)

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
        if job is None or not may_see(job, interaction.user.id, interaction.guild_id, interaction.permissions):
            # The same answer whether the job does not exist or is not theirs to see: ids are not probed.
            await interaction.edit_original_response(content=f"You have no job `{job_id}` in this server.")
            return
        files: list[discord.File] = []
        images = await repository.images_for_job(self.services.db, job.id) if job.status == "done" else []
        deleted = result_deleted(job, images)
        if not deleted:
            for image in images:
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
        if deleted:
            status += " — the result was deleted, so its images are not shown"
        elif images and all(image.pruned for image in images):
            status += " — its images were removed from the bot's storage"
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
            if job.user_id != interaction.user.id and not is_moderator(interaction.permissions):
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

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        """A result deleted in Discord (not only with its Delete button) is never shown again by /job."""
        job = await repository.find_job_by_message(self.services.db, payload.message_id)
        if job is not None and job.message_id == payload.message_id:
            await repository.set_job_message(self.services.db, job.id, None)
            log.info("result message deleted", extra={"job": job.id, "message_id": payload.message_id})

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
        await interaction.response.send_message("\n".join(lines), ephemeral=True)


async def setup(bot: Any) -> None:
    await bot.add_cog(Jobs(bot))
