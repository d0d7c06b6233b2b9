"""/contest: themed image contests with a submission window, a voting window and a results picture.

The Discord side only: every rule and every count lives in :class:`bot.contests.service.ContestService` and the
database. Buttons are :class:`discord.ui.DynamicItem` s whose ``custom_id`` carries the ids they act on
(``contest:submit:<job>:<image>``, ``contest:vote:<entry>``, ``contest:unvote:<entry>``), so they keep working on
messages posted before a restart. Votes can also be given with a ⭐ reaction and taken back by removing it; a
refused reaction is removed again so what members see matches what is counted (counts come from the votes
table, never from Discord's reaction counts).

This cog is also the service's :class:`~bot.contests.service.ContestPublisher`: when a deadline is processed
the service asks it to post "voting is open" or the results (picture and full ranking).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections.abc import Sequence
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.contests.rules import RuleError, format_duration
from bot.contests.service import ContestService, Outcome
from bot.discord import formatting
from bot.discord.permissions import bot_permissions_in
from bot.discord.replies import APOLOGY, answer
from bot.storage.contest_records import ContestRecord, EntryRecord
from bot.text import discord_timestamp, truncate

log = logging.getLogger(__name__)

VOTE_EMOJI = "⭐"
NO_MENTIONS = discord.AllowedMentions.none()
NOTICE_DELETE_AFTER = 20.0
MESSAGE_LIMIT = 2000
LEADERBOARD_LINES = 15
MAX_SUBMIT_BUTTONS = 4


def _cog(interaction: discord.Interaction) -> ContestCog:
    return interaction.client.get_cog("Contests")  # type: ignore[attr-defined,return-value]


class SubmitButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                   template=r"contest:submit:(?P<job_id>[0-9]{1,19}):(?P<index>[0-9]{1,2})"):
    """"Submit to contest" under a result: enters that image in the channel's running contest."""

    def __init__(self, job_id: int, index: int = 0, *, count: int = 1) -> None:
        label = "Submit to contest" if count == 1 else f"Submit #{index + 1}"
        super().__init__(discord.ui.Button(label=label, emoji="🏆", style=discord.ButtonStyle.success,
                                           custom_id=f"contest:submit:{int(job_id)}:{int(index)}"))
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> SubmitButton:
        return cls(int(match["job_id"]), int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).submit_entry(interaction, self.job_id, self.index)


class VoteButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"contest:vote:(?P<entry_id>[0-9]{1,19})"):
    """⭐ Vote on an entry (one per member per entry; the rules are the service's)."""

    def __init__(self, entry_id: int) -> None:
        super().__init__(discord.ui.Button(label="Vote", emoji=VOTE_EMOJI, style=discord.ButtonStyle.primary,
                                           custom_id=f"contest:vote:{int(entry_id)}"))
        self.entry_id = entry_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> VoteButton:
        return cls(int(match["entry_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).vote_from_button(interaction, self.entry_id, add=True)


class UnvoteButton(discord.ui.DynamicItem[discord.ui.Button[Any]],
                   template=r"contest:unvote:(?P<entry_id>[0-9]{1,19})"):
    """Takes one's vote back (a second ⭐ click is refused as a double vote, not silently undone)."""

    def __init__(self, entry_id: int) -> None:
        super().__init__(discord.ui.Button(label="Remove my vote", style=discord.ButtonStyle.secondary,
                                           custom_id=f"contest:unvote:{int(entry_id)}"))
        self.entry_id = entry_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> UnvoteButton:
        return cls(int(match["entry_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).vote_from_button(interaction, self.entry_id, add=False)


CONTEST_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (SubmitButton, VoteButton, UnvoteButton)


def entry_view(entry_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(entry_id))
    view.add_item(UnvoteButton(entry_id))
    return view


def submit_items(job_id: int, count: int) -> list[discord.ui.Item[Any]]:
    """The "Submit to contest" button(s) for a result with ``count`` images."""
    return [SubmitButton(job_id, i, count=count) for i in range(min(count, MAX_SUBMIT_BUTTONS))]


def announcement_text(contest: ContestRecord) -> str:
    limit = f"\nEach member may enter up to **{contest.max_entries}** image(s)." if contest.max_entries else ""
    return (
        f"🏆 **Image contest: {truncate(contest.theme, 200)}**\n"
        f"Submissions close {discord_timestamp(contest.submit_ends_at, 'R')} "
        f"({discord_timestamp(contest.submit_ends_at, 'f')}); voting closes "
        f"{discord_timestamp(contest.vote_ends_at, 'R')} ({discord_timestamp(contest.vote_ends_at, 'f')}).\n"
        "Generate an image with `/imagine` here, then press **Submit to contest** under it (or use "
        f"`/contest submit job:<id>`). Vote with {VOTE_EMOJI} on the entries once voting opens: one vote per entry, "
        f"not for your own.{limit}"
    )


def ranking_messages(outcome: Outcome) -> list[str]:
    """The full ranking as text, split into as many messages as Discord's 2000-character limit needs."""
    contest = outcome.contest
    if not outcome.ranking:
        return [f"🏁 **Contest over: {truncate(contest.theme, 200)}**\nNo entries this time."]
    medals = {1: "🥇", 2: "🥈", 3: "🥉"}
    lines = [f"🏁 **Results: {truncate(contest.theme, 200)}**"]
    for ranked in outcome.ranking:
        votes = f"{ranked.votes} vote{'' if ranked.votes == 1 else 's'}"
        lines.append(f"{medals.get(ranked.place, f'{ranked.place}.')} <@{ranked.entry.user_id}>: {votes}"
                     f" (entry #{ranked.entry.id})")
    lines.append("-# Ties go to the earlier submission. Leaderboard points: 3, 2 and 1 for the podium.")
    chunks: list[str] = []
    current = ""
    for line in lines:
        if current and len(current) + 1 + len(line) > MESSAGE_LIMIT:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    chunks.append(current)
    return chunks


@app_commands.guild_only()
class ContestCog(commands.GroupCog, name="Contests", group_name="contest",
                 group_description="Image contests: a theme, a submission window and a vote"):
    """The /contest commands, the contest buttons and ⭐ reactions, and the service's publisher."""

    def __init__(self, bot: Any, service: ContestService) -> None:
        self.bot = bot
        self.service = service
        self._ignore_removal: set[tuple[int, int]] = set()
        super().__init__()

    async def cog_load(self) -> None:
        self.service.publisher = self
        self.bot.add_dynamic_items(*CONTEST_ITEMS)
        delivery = getattr(self.bot, "delivery", None)
        providers = getattr(delivery, "result_item_providers", None)
        if providers is not None and self.result_items not in providers:
            providers.append(self.result_items)

    async def cog_unload(self) -> None:
        if self.service.publisher is self:
            self.service.publisher = None
        self.bot.remove_dynamic_items(*CONTEST_ITEMS)
        delivery = getattr(self.bot, "delivery", None)
        providers = getattr(delivery, "result_item_providers", None)
        if providers is not None and self.result_items in providers:
            providers.remove(self.result_items)

    # --- helpers -------------------------------------------------------------------------------------------

    def _channel(self, contest: ContestRecord) -> discord.PartialMessageable:
        return self.bot.get_partial_messageable(contest.channel_id, guild_id=contest.guild_id)

    async def display_names(self, guild_id: int, user_ids: Sequence[int]) -> dict[int, str]:
        """Display names for captions (no member cache: fetched, falling back to the user's name)."""
        guild = self.bot.get_guild(guild_id)
        names: dict[int, str] = {}
        for user_id in dict.fromkeys(user_ids):
            member = guild.get_member(user_id) if guild is not None else None
            try:
                if member is None and guild is not None:
                    member = await guild.fetch_member(user_id)
                names[user_id] = member.display_name if member is not None else (
                    await self.bot.fetch_user(user_id)).display_name
            except discord.HTTPException:
                names[user_id] = f"member {user_id}"
        return names

    async def result_items(self, job: Any, images: Sequence[Any]) -> list[discord.ui.Item[Any]]:
        """For delivery: the Submit button(s) when a contest this result can still enter runs in its channel."""
        if job.guild_id is None or job.status != "done" or not images:
            return []
        try:
            contest = await self.service.submittable(job.channel_id, job.queued_at)
        except Exception:
            log.exception("contest lookup for job %s failed", job.id)
            return []
        if contest is None:
            return []
        return submit_items(job.id, len(images))

    # --- publisher -----------------------------------------------------------------------------------------

    async def voting_opened(self, contest: ContestRecord, entries: int) -> None:
        if entries:
            text = (f"🗳️ **Voting is open: {truncate(contest.theme, 200)}** ({entries} entr"
                    f"{'y' if entries == 1 else 'ies'}).\nPress {VOTE_EMOJI} **Vote** (or react {VOTE_EMOJI}) on the "
                    "entries you like: one vote per entry, not for your own. Voting closes "
                    f"{discord_timestamp(contest.vote_ends_at, 'R')}.")
        else:
            text = (f"🗳️ Submissions are closed for **{truncate(contest.theme, 200)}**, and nobody entered. The "
                    f"contest ends {discord_timestamp(contest.vote_ends_at, 'R')}.")
        await self._channel(contest).send(text, allowed_mentions=NO_MENTIONS)

    async def results_ready(self, contest: ContestRecord, outcome: Outcome) -> int | None:
        """The picture with the first part of the ranking; the rest of a long ranking follows in more messages."""
        names = await self.display_names(contest.guild_id, [r.entry.user_id for r in outcome.podium])
        picture = await self.service.picture(outcome, names)
        kwargs: dict[str, Any] = {}
        if picture is not None:
            kwargs["file"] = discord.File(io.BytesIO(picture), filename=f"contest-{contest.id}-results.png")
        first, *rest = ranking_messages(outcome)
        channel = self._channel(contest)
        try:
            message = await channel.send(first, allowed_mentions=NO_MENTIONS, **kwargs)
        except (discord.NotFound, discord.Forbidden):
            # The channel is gone or closed to the bot: retrying cannot help. The results stay stored (and count
            # for the leaderboard); other errors propagate so the results timer tries again.
            log.warning("contest %s results could not be posted in channel %s", contest.id, contest.channel_id,
                        exc_info=True)
            return None
        for chunk in rest:
            with contextlib.suppress(discord.HTTPException):  # the podium is posted; a lost tail is not retried
                await channel.send(chunk, allowed_mentions=NO_MENTIONS)
        log.info("contest results posted", extra={"contest": contest.id, "entries": len(outcome.ranking)})
        return message.id

    # --- entering ------------------------------------------------------------------------------------------

    async def submit_entry(self, interaction: discord.Interaction, job_id: int, index: int) -> None:
        """Shared by the Submit button and /contest submit: enter, post the entry, confirm privately."""
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
            try:
                contest, entry = await self.service.submit(
                    guild_id=interaction.guild_id, channel_id=interaction.channel_id or 0,
                    member_id=interaction.user.id, job_id=job_id, image_index=index)
            except RuleError as exc:
                await answer(interaction, exc.message)
                return
            message = await self.post_entry(contest, entry, interaction.user)
            if message is None:
                await self.service.withdraw(entry.id)
                await answer(interaction, "I could not post your entry in the contest channel (missing permission?),"
                                          " so it was not entered.")
                return
            await answer(interaction, f"🏆 Entered in **{truncate(contest.theme, 200)}**: {message.jump_url}")
        except Exception:
            log.exception("contest submission failed", extra={"job": job_id, "user": interaction.user.id})
            await answer(interaction, APOLOGY)

    async def post_entry(self, contest: ContestRecord, entry: EntryRecord,
                         author: discord.abc.User) -> discord.Message | None:
        png = await self.service.entry_image(entry)
        if png is None:
            return None
        limit = self.bot.services.settings.discord.attachment_size_limit
        try:  # the stored original may be over the upload limit: shrink it like a result
            png, _ = await asyncio.to_thread(formatting.fit_attachment, png, limit)
        except ValueError:
            log.warning("entry %s's image cannot be made to fit %d bytes", entry.id, limit)
            return None
        filename = f"contest-{contest.id}-entry-{entry.id}.png"
        embed = discord.Embed(title=f"Entry #{entry.id}", description=truncate(entry.prompt, 1000),
                              colour=discord.Colour.gold())
        embed.set_author(name=author.display_name, icon_url=author.display_avatar.url)
        embed.set_image(url=f"attachment://{filename}")
        embed.set_footer(text=f"Contest: {truncate(contest.theme, 100)}")
        try:
            message = await self._channel(contest).send(
                f"Entry by {author.mention}", embed=embed, file=discord.File(io.BytesIO(png), filename=filename),
                view=entry_view(entry.id), allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            log.warning("could not post entry %s", entry.id, exc_info=True)
            return None
        await self.service.entry_posted(entry.id, message.id)
        return message

    # --- voting --------------------------------------------------------------------------------------------

    async def vote_from_button(self, interaction: discord.Interaction, entry_id: int, *, add: bool) -> None:
        try:
            change = await (self.service.vote if add else self.service.unvote)(entry_id, interaction.user.id)
        except RuleError as exc:
            await answer(interaction, exc.message)
            return
        except Exception:
            log.exception("vote failed", extra={"entry": entry_id, "user": interaction.user.id})
            await answer(interaction, APOLOGY)
            return
        if add:
            await answer(interaction, f"{VOTE_EMOJI} Vote counted for entry #{entry_id}. Thanks!")
        else:
            await answer(interaction, f"Your vote for entry #{entry_id} was removed.")
        log.info("contest vote", extra={"entry": entry_id, "user": interaction.user.id, "add": add,
                                        "votes": change.votes})

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.guild_id is None or str(payload.emoji) != VOTE_EMOJI:
            return
        if (self.bot.user is not None and payload.user_id == self.bot.user.id) or (
                payload.member is not None and payload.member.bot):
            return
        try:
            entry = await self.service.entry_for_message(payload.message_id)
            if entry is None:
                return
            try:
                await self.service.vote(entry.id, payload.user_id)
            except RuleError as exc:
                await self._refuse_reaction(payload, exc.message)
        except Exception:
            log.exception("vote by reaction failed", extra={"message_id": payload.message_id, "user": payload.user_id})

    async def _refuse_reaction(self, payload: discord.RawReactionActionEvent, reason: str) -> None:
        """Take the refused ⭐ off again (so it does not look counted) and say why, briefly."""
        key = (payload.message_id, payload.user_id)
        permissions = bot_permissions_in(self.bot, payload.channel_id)
        if permissions is not None and not permissions.manage_messages:
            await self.bot.delivery.notices.missing(
                payload.guild_id, payload.channel_id, "manage_messages",
                "members' 🔄 and ⭐ reactions stay on the messages after I acted on them")
        else:
            self._ignore_removal.add(key)
            try:
                await self.bot.http.remove_reaction(payload.channel_id, payload.message_id, VOTE_EMOJI,
                                                    payload.user_id)
            except discord.HTTPException:
                self._ignore_removal.discard(key)
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        with contextlib.suppress(discord.HTTPException):
            await channel.send(f"<@{payload.user_id}> {reason}", delete_after=NOTICE_DELETE_AFTER,
                               allowed_mentions=discord.AllowedMentions(users=True, everyone=False, roles=False))

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.guild_id is None or str(payload.emoji) != VOTE_EMOJI:
            return
        key = (payload.message_id, payload.user_id)
        if key in self._ignore_removal:
            self._ignore_removal.discard(key)
            return
        try:
            entry = await self.service.entry_for_message(payload.message_id)
            if entry is None:
                return
            with contextlib.suppress(RuleError):  # no vote to take back (refused earlier, or voting closed)
                await self.service.unvote(entry.id, payload.user_id)
        except Exception:
            log.exception("unvote by reaction failed", extra={"message_id": payload.message_id})

    # --- deleted entry messages ------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._withdraw(payload.message_id)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            await self._withdraw(message_id)

    async def _withdraw(self, message_id: int) -> None:
        try:
            entry = await self.service.withdraw_by_message(message_id)
        except Exception:
            log.exception("withdrawing the entry of deleted message %s failed", message_id)
            return
        if entry is not None:
            log.info("contest entry withdrawn (message deleted)", extra={"entry": entry.id, "user": entry.user_id})

    # --- commands ------------------------------------------------------------------------------------------

    @app_commands.command(name="start", description="Start an image contest (Manage Server)")
    @app_commands.describe(
        theme="What the images should show", submit_for="How long members may submit, e.g. 30m, 2h, 1d",
        vote_for="How long voting lasts after that, e.g. 1h, 1d", channel="Where to run it (default: here)",
        max_entries="Most entries per member (default: no limit)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def start(self, interaction: discord.Interaction, theme: app_commands.Range[str, 1, 200],
                    submit_for: str, vote_for: str, channel: discord.TextChannel | None = None,
                    max_entries: app_commands.Range[int, 1, 50] | None = None) -> None:
        target = channel.id if channel is not None else (interaction.channel_id or 0)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            contest = await self.service.start(
                guild_id=interaction.guild_id or 0, channel_id=target, created_by=interaction.user.id, theme=theme,
                submit_for=submit_for, vote_for=vote_for, max_entries=max_entries)
        except RuleError as exc:
            await answer(interaction, exc.message)
            return
        try:
            message = await self._channel(contest).send(announcement_text(contest), allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            await self.service.cancel(contest.guild_id, contest.channel_id)
            await answer(interaction, f"I cannot post in <#{target}> (missing permission?), so no contest was started.")
            return
        await self.service.set_announcement(contest.id, message.id)
        log.info("contest started", extra={"contest": contest.id, "channel": target, "by": interaction.user.id})
        await answer(interaction, f"Contest #{contest.id} started in <#{target}>: submissions for "
                                  f"{format_duration(contest.submit_ends_at - contest.starts_at)}, then voting for "
                                  f"{format_duration(contest.vote_ends_at - contest.submit_ends_at)}.")

    @app_commands.command(name="submit", description="Enter one of your images in this channel's contest")
    @app_commands.describe(job="The job id shown under your /imagine result",
                           image="Which image of that job (default: the first)")
    async def submit(self, interaction: discord.Interaction, job: app_commands.Range[int, 1],
                     image: app_commands.Range[int, 1, 4] = 1) -> None:
        await self.submit_entry(interaction, job, image - 1)

    @app_commands.command(name="status", description="The contest in this channel: phase, deadlines, entries")
    async def status(self, interaction: discord.Interaction) -> None:
        try:
            status = await self.service.status(interaction.guild_id, interaction.channel_id or 0,
                                               interaction.user.id)
        except RuleError as exc:
            await answer(interaction, exc.message)
            return
        contest = status.contest
        phase = {
            "submitting": f"📥 Submissions open until {discord_timestamp(contest.submit_ends_at, 'f')} "
                          f"({discord_timestamp(contest.submit_ends_at, 'R')})",
            "voting": f"🗳️ Voting open until {discord_timestamp(contest.vote_ends_at, 'f')} "
                      f"({discord_timestamp(contest.vote_ends_at, 'R')})",
            "finished": "🏁 Finished" + (f" {discord_timestamp(contest.finished_at, 'R')}"
                                        if contest.finished_at else ""),
            "cancelled": "🚫 Cancelled",
        }[status.phase]
        limit = f" (limit {contest.max_entries} per member)" if contest.max_entries else ""
        await answer(interaction, "\n".join([
            f"🏆 **{truncate(contest.theme, 200)}** in <#{contest.channel_id}> (contest #{contest.id})",
            phase,
            f"Entries: {status.entries} from {status.entrants} member(s); yours: {status.your_entries}{limit}",
            f"Votes cast: {status.votes}",
        ]))

    @app_commands.command(name="cancel", description="Cancel this channel's running contest (Manage Server)")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def cancel(self, interaction: discord.Interaction) -> None:
        try:
            contest = await self.service.cancel(interaction.guild_id, interaction.channel_id or 0)
        except RuleError as exc:
            await answer(interaction, exc.message)
            return
        with contextlib.suppress(discord.HTTPException):
            await self._channel(contest).send(f"🚫 The contest **{truncate(contest.theme, 200)}** was cancelled by "
                                              f"{interaction.user.mention}.", allowed_mentions=NO_MENTIONS)
        log.info("contest cancelled", extra={"contest": contest.id, "by": interaction.user.id})
        await answer(interaction, f"Contest #{contest.id} cancelled.")

    @app_commands.command(name="leaderboard", description="All-time contest wins and points in this server")
    async def leaderboard(self, interaction: discord.Interaction) -> None:
        standings = await self.service.leaderboard(interaction.guild_id or 0)
        if not standings:
            await answer(interaction, "No contest has finished in this server yet.", ephemeral=False)
            return
        lines = ["🏆 **Contest leaderboard** (3/2/1 points for the podium; a win is a first place)"]
        for i, s in enumerate(standings[:LEADERBOARD_LINES], start=1):
            lines.append(f"{i}. <@{s.user_id}>: **{s.points}** point{'' if s.points == 1 else 's'}, "
                         f"{s.wins} win{'' if s.wins == 1 else 's'} ({s.contests} contest"
                         f"{'' if s.contests == 1 else 's'})")
        await answer(interaction, "\n".join(lines), ephemeral=False, allowed_mentions=NO_MENTIONS)


async def setup(bot: Any) -> None:
    await bot.add_cog(ContestCog(bot, bot.services.contests))
