"""The discord.py bot: a thin shell around the :class:`~bot.bootstrap.Services` that ``bot/app.py`` built.

In the style of RoboDanny: one Bot subclass whose ``setup_hook`` loads one cog per file in ``bot/cogs/``. It
builds nothing itself (the composition root does that), so tests can run the real bot against the local
Discord-compatible server with whatever services they assembled.

``setup_hook`` order matters: cogs and persistent buttons first (a click can arrive as soon as the gateway is
up), then command sync, then journal recovery (recovered jobs are delivered through the cogs' delivery), then
the inbox replay (commands acknowledged before a crash that never became jobs; they queue behind the others).
The
durable timers start once the gateway is ready, because their handlers post messages (and the cogs that post
them are loaded by then); they stop when the bot closes.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
import traceback
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.delivery import Delivery
from bot.discord.replay import replay_inbox
from bot.discord.replies import APOLOGY, answer
from bot.discord.views import DYNAMIC_ITEMS
from bot.services import Services

log = logging.getLogger(__name__)

COGS_PACKAGE = "bot.discord.cogs"


def bot_intents() -> discord.Intents:
    """Guilds (channels, roles, permissions), guild reactions (🔄 reruns, ⭐ contest votes) and guild messages
    (MESSAGE_DELETE, so deleting a contest entry's message withdraws it); nothing privileged (no message content).
    """
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_reactions = True
    intents.guild_messages = True
    return intents


def cog_modules() -> list[str]:
    """Every module in ``bot/cogs/`` (one cog per concern, each with an ``async setup(bot)``), sorted."""
    package = importlib.import_module(COGS_PACKAGE)
    return sorted(
        f"{COGS_PACKAGE}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    )


def describe_check_failure(error: app_commands.AppCommandError) -> str | None:
    """The sentence a member sees for a failed check, or None when the error is unexpected."""
    if isinstance(error, app_commands.MissingPermissions):
        needed = ", ".join(p.replace("_", " ").replace("guild", "server").title() for p in error.missing_permissions)
        return f"You need the **{needed}** permission to use this command."
    if isinstance(error, app_commands.BotMissingPermissions):
        needed = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"I am missing the **{needed}** permission in this channel."
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in a server."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or "You are not allowed to use this command here."
    if isinstance(error, app_commands.TransformerError | app_commands.CommandSignatureMismatch):
        return "That option value was not understood. Please check it and try again."
    return None


class ImagineTree(app_commands.CommandTree):
    """Global app-command check and error handler: members get one short sentence, admins the traceback in the log.

    Every command needs a server (limits, filters and jobs belong to one). ``guild_only`` is only metadata that
    Discord's client may or may not honour, so the check runs here, at run time, for every command.
    """

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.guild_id is None:
            if interaction.type is discord.InteractionType.autocomplete:
                return False  # an autocomplete cannot show a sentence; the command itself is refused below
            raise app_commands.NoPrivateMessage()
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        message = describe_check_failure(error)
        if message is None:
            original = getattr(error, "original", error)
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error(
                "command %s failed: %s\n%s",
                command,
                original,
                "".join(traceback.format_exception(type(original), original, original.__traceback__)),
                extra={"command": command, "user": interaction.user.id, "guild": interaction.guild_id},
            )
            message = APOLOGY
        await answer(interaction, message)


class _ImagineBotMixin:
    """Shared by the plain and the auto-sharded bot (the class is picked at runtime from settings)."""

    services: Services
    delivery: Delivery
    tree: ImagineTree

    def _init_imagine(self, services: Services) -> None:
        self.services = services
        self.recovered: list[Any] = []
        self.background: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any, *, name: str | None = None) -> asyncio.Task[Any]:
        """Run a coroutine in the background, keeping a reference and logging (never losing) its failure."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.background.add(task)

        def _done(t: asyncio.Task[Any]) -> None:
            self.background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                log.error("background task %s failed", t.get_name(), exc_info=(type(exc), exc, exc.__traceback__))

        task.add_done_callback(_done)
        return task

    async def setup_hook(self) -> None:
        bot: Any = self
        self.delivery = Delivery(bot, self.services)
        self.services.journal.add_listener(self.delivery.on_job_finished)
        for module in cog_modules():
            await bot.load_extension(module)
        bot.add_dynamic_items(*DYNAMIC_ITEMS)
        await self.sync_commands()
        await self.recover_jobs()
        try:
            await replay_inbox(self)
        except Exception:
            log.exception("replaying the inbox failed; its entries are tried again at the next start")
        self.spawn(self._start_timers_when_ready(), name="timers-start")

    async def _start_timers_when_ready(self) -> None:
        """Timers that came due while the bot was down run now, in order."""
        bot: Any = self
        await bot.wait_until_ready()
        self.services.timers.start()
        log.info("timers armed")

    async def sync_commands(self) -> None:
        """Guild sync is instant (used for the configured guilds); a global sync can take up to an hour."""
        bot: Any = self
        guild_ids = self.services.settings.discord.guild_ids
        try:
            if guild_ids:
                for guild_id in guild_ids:
                    guild = discord.Object(id=guild_id)
                    bot.tree.copy_global_to(guild=guild)
                    synced = await bot.tree.sync(guild=guild)
                    log.info("synced %d commands to guild %s", len(synced), guild_id)
            else:
                synced = await bot.tree.sync()
                log.info("synced %d global commands", len(synced))
        except discord.HTTPException:
            log.exception("command sync failed; existing commands stay registered")

    async def recover_jobs(self) -> None:
        """Re-queue what the journal left queued/running; each is delivered by the journal listener when done."""
        try:
            await self.delivery.fail_jobs_in_gone_channels()
        except Exception:
            log.exception("checking the channels of unfinished jobs failed; recovering them all")
        try:
            recovered = await self.services.journal.recover()
        except Exception:
            log.exception("journal recovery failed")
            return
        self.recovered = list(recovered)
        if recovered:
            log.info("recovered %d unfinished job(s) from the journal", len(recovered))

    async def on_ready(self) -> None:
        bot: Any = self
        log.info("ready as %s (id %s) in %d guild(s)", bot.user, bot.user.id, len(bot.guilds))

    async def close(self) -> None:
        delivery = getattr(self, "delivery", None)
        if delivery is not None:  # services may outlive this bot (a restart in-process): stop delivering here
            self.services.journal.remove_listener(delivery.on_job_finished)
        for task in list(self.background):
            task.cancel()
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        if delivery is not None:
            await delivery.close()
        await self.services.timers.stop()  # their handlers post through this bot; the next one starts them again
        await super().close()  # type: ignore[misc]


def _bot_kwargs(services: Services) -> dict[str, Any]:
    # This bot never joins voice: the "PyNaCl/davey is not installed" start-up warnings would only alarm admins.
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False
    settings = services.settings.discord
    kwargs: dict[str, Any] = {
        "command_prefix": commands.when_mentioned,
        "intents": bot_intents(),
        "tree_cls": ImagineTree,
        "help_command": None,
        "allowed_mentions": discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True),
        "chunk_guilds_at_startup": False,
        "member_cache_flags": discord.MemberCacheFlags.none(),
    }
    if settings.sharded and settings.shard_count:
        kwargs["shard_count"] = settings.shard_count
    return kwargs


class ImagineBot(_ImagineBotMixin, commands.Bot):
    """The bot for one connection (fewer than ~2500 guilds)."""

    def __init__(self, services: Services) -> None:
        super().__init__(**_bot_kwargs(services))
        self._init_imagine(services)


class ShardedImagineBot(_ImagineBotMixin, commands.AutoShardedBot):
    """The same bot, sharded automatically (``discord.sharded: true``)."""

    def __init__(self, services: Services) -> None:
        super().__init__(**_bot_kwargs(services))
        self._init_imagine(services)


def create_bot(services: Services) -> ImagineBot | ShardedImagineBot:
    """Pick the bot class at runtime: AutoShardedBot when ``settings.discord.sharded``."""
    if services.settings.discord.sharded:
        return ShardedImagineBot(services)
    return ImagineBot(services)
