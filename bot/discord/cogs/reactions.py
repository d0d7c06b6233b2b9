"""🔄 on a result message reruns it: same prompt and parameters, a new random seed, as a child job.

``on_raw_reaction_add`` (not ``on_reaction_add``) so it works on messages that are not cached, including
every message posted before a restart: the job is found by message id in the database.

There is no interaction to answer privately, so replies are channel messages that mention the member:
a refusal is short and deletes itself after :data:`REFUSAL_DELETE_AFTER` seconds (a reaction is a
one-click action; a permanent refusal in the channel would be noise and would expose who was refused
for longer than needed), the "queued" note is removed once the result (which mentions the member) is posted.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import discord
from discord.ext import commands

from bot.discord import formatting
from bot.discord.delivery import MENTIONS, RERUN_EMOJI
from bot.gate.submission import Options, Origin, Refusal, submit
from bot.storage import repository

log = logging.getLogger(__name__)

REFUSAL_DELETE_AFTER = 20.0


class Reactions(commands.Cog):
    """Reruns by reaction; refusals and the queued note are channel messages mentioning the member."""

    def __init__(self, bot: Any) -> None:
        self.bot = bot
        self.services = bot.services

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.guild_id is None or str(payload.emoji) != RERUN_EMOJI:
            return
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return  # our own 🔄 added under each result
        if payload.member is not None and payload.member.bot:
            return
        try:
            await self.rerun(payload)
        except Exception:
            log.exception("rerun by reaction failed", extra={"message_id": payload.message_id, "user": payload.user_id})

    async def rerun(self, payload: discord.RawReactionActionEvent) -> None:
        job = await repository.find_job_by_message(self.services.db, payload.message_id)
        if job is None or (job.guild_id is not None and job.guild_id != payload.guild_id):
            return  # not one of our results
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        # Let the member react again later: take their reaction off (needs Manage Messages; optional).
        with contextlib.suppress(discord.HTTPException):
            await self.bot.http.remove_reaction(payload.channel_id, payload.message_id, RERUN_EMOJI, payload.user_id)
        roles = tuple(role.id for role in payload.member.roles) if payload.member is not None else ()
        origin = Origin(user_id=payload.user_id, channel_id=payload.channel_id, guild_id=payload.guild_id,
                        role_ids=roles, parent_job_id=job.id, source="reaction")
        outcome = await submit(self.services.gate, Options.rerun_of(job), origin)
        mention = f"<@{payload.user_id}>"
        reference = discord.MessageReference(message_id=payload.message_id, channel_id=payload.channel_id,
                                             guild_id=payload.guild_id, fail_if_not_exists=False)
        if isinstance(outcome, Refusal):
            with contextlib.suppress(discord.HTTPException):
                await channel.send(f"{mention} {outcome.message}", delete_after=REFUSAL_DELETE_AFTER,
                                   allowed_mentions=MENTIONS, reference=reference, mention_author=False)
            return
        worker = self.services.worker
        position = worker.position(outcome.handle.job_id)
        note = formatting.queued_message(position, worker.estimate_seconds(outcome.handle.job_id))
        watched = self.bot.delivery.watch(outcome.job, outcome.handle, None)
        try:
            watched.status_message = await channel.send(
                f"{mention} 🔄 rerun of job `{job.id}` → job `{outcome.job.id}`: {note}",
                allowed_mentions=MENTIONS, reference=reference, mention_author=False)
        except discord.HTTPException:
            log.info("could not post the queued note for job %s", outcome.job.id, exc_info=True)
            return
        if watched.finished:  # the result was faster than the note
            await self.bot.delivery.remove_status_message(watched)


async def setup(bot: Any) -> None:
    await bot.add_cog(Reactions(bot))
