"""/imagine and the result buttons that make new jobs (🔄 Rerun, Upscale, Vary): record, acknowledge at
once, run the gate, then hand the job to delivery.

Acknowledged means durable: the command is written to the inbox (one INSERT) before the interaction is
deferred, so a process killed after "thinking…" and before the journal still has it; the next start replays it
(``bot/discord/replay.py``). The journal deletes the entry with the job's INSERT; a refusal deletes it once
answered.

The command class is built by :func:`make_imagine_cog` from the config so the Discord-side bounds
(``app_commands.Range``: steps, size, ...) and choices (models, styles) are the configured ones: Discord refuses
out-of-range values before they reach us, and :func:`generation.request.validate_request` still checks everything
behind it. (No ``from __future__ import annotations`` here: the Range bounds must be evaluated inside the factory.)
"""

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.replay import derivation, rerun_refusal
from bot.discord.uploads import describe, read_attachment
from bot.gate.aspect import ASPECT_PRESETS
from bot.gate.refusals import refusal_message
from bot.gate.submission import Accepted, Derivation, Options, Origin, Refusal, submit
from bot.storage import inbox, repository
from generation.request import (
    MAX_COUNT,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_GUIDANCE,
    MIN_STRENGTH,
    RequestError,
)
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)

# How long the inbox write may take before the deferral goes out anyway (Discord allows 3 s for the ack); the
# work still waits for the write, so only a crash inside this rare slow window could lose the command.
INBOX_WRITE_BUDGET = 1.5


def scheduler_choices() -> list[app_commands.Choice[str]]:
    """The samplers this install offers, under their web-UI names (Discord allows 25 choices)."""
    from generation.schedulers import SAMPLER_LABELS, SCHEDULER_NAMES

    return [app_commands.Choice(name=SAMPLER_LABELS.get(n, n), value=n) for n in SCHEDULER_NAMES][:25]


def named_choices(names: Any) -> list[app_commands.Choice[str]]:
    """Configured names (models, styles) as slash-command choices (Discord shows at most 25)."""
    return [app_commands.Choice(name=name, value=name) for name in list(names)[:25]]


def origin_of(interaction: discord.Interaction, *, parent_job_id: int | None = None,
              parent_image_index: int | None = None, source: str = "imagine") -> Origin:
    """Ids only (no Discord objects) for the submission gate; the token lets delivery post the followup."""
    roles = getattr(interaction.user, "roles", None) or ()
    return Origin(
        user_id=interaction.user.id,
        channel_id=interaction.channel_id or 0,
        guild_id=interaction.guild_id,
        role_ids=tuple(role.id for role in roles),
        interaction_id=interaction.id,
        interaction_token=interaction.token,
        application_id=interaction.application_id,
        parent_job_id=parent_job_id,
        parent_image_index=parent_image_index,
        source=source,
    )


class ImagineBase(commands.Cog, name="Imagine"):
    """Shared by the generated cog class: the flow after the interaction was deferred."""

    def __init__(self, bot: Any) -> None:
        self.bot = bot
        self.services = bot.services

    async def acknowledge(self, interaction: discord.Interaction, options: dict[str, Any], *,
                          parent_job_id: int | None = None, source: str = "imagine") -> bool:
        """Write the command to the inbox, then defer ("thinking…"); False when Discord no longer takes the
        interaction (then nothing was acknowledged and the entry is deleted again).

        ``options`` are the command's (``Options`` as a dict); a Rerun click stores none, only the clicked job.
        """
        origin = origin_of(interaction, parent_job_id=parent_job_id, source=source)
        write = asyncio.ensure_future(inbox.record(
            self.services.db, interaction_id=interaction.id, application_id=interaction.application_id,
            token=interaction.token, guild_id=origin.guild_id, channel_id=origin.channel_id,
            user_id=origin.user_id, role_ids=origin.role_ids, options=options, source=source,
            parent_job_id=parent_job_id))
        done, _ = await asyncio.wait({write}, timeout=INBOX_WRITE_BUDGET)
        if write in done:
            write.result()  # a failed write: no ack, the error handler answers with an apology
        else:
            log.warning("the inbox write of interaction %s is slow; acknowledging before it is durable",
                        interaction.id)
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except discord.NotFound:  # 10062 Unknown interaction: too late, the member saw it fail
            log.warning("interaction %s expired before it was acknowledged", interaction.id)
            await write
            await inbox.forget(self.services.db, interaction.id)
            return False
        await write
        return True

    async def start(self, interaction: discord.Interaction, options: Options, *, parent_job_id: int | None = None,
                    parent_image_index: int | None = None, source: str = "imagine") -> Accepted | Refusal:
        """Gate and queue; the deferred ephemeral response shows a refusal, or position then progress."""
        origin = origin_of(interaction, parent_job_id=parent_job_id, parent_image_index=parent_image_index,
                           source=source)
        try:
            outcome = await submit(self.services.gate, options, origin)
        except Exception:
            await self._forget(interaction.id)  # the error handler answers the member: nothing to replay
            raise
        if isinstance(outcome, Refusal):
            await self._edit(interaction, outcome.message)
            await self._forget(interaction.id)
            return outcome
        # Registered before any await so a very fast result cannot overtake it.
        self.bot.delivery.watch(outcome.job, outcome.handle, interaction)
        return outcome

    async def _forget(self, interaction_id: int) -> None:
        try:
            await inbox.forget(self.services.db, interaction_id)
        except Exception:
            log.exception("could not delete the inbox entry of interaction %s; it is replayed at the next start",
                          interaction_id)

    async def _edit(self, interaction: discord.Interaction, content: str) -> None:
        try:
            await interaction.edit_original_response(content=content)
        except discord.HTTPException:
            log.info("could not edit the deferred response of interaction %s", interaction.id, exc_info=True)

    async def rerun_from_button(self, interaction: discord.Interaction, job_id: int) -> None:
        """🔄 Rerun: same prompt and parameters, new random seed, as a child job of the clicked one. The click
        is recorded (the clicked job's id) before the ack, like /imagine."""
        if not await self.acknowledge(interaction, {}, parent_job_id=job_id, source="rerun_button"):
            return
        try:
            job = await repository.get_job(self.services.db, job_id)
        except Exception:
            await self._forget(interaction.id)
            raise
        refusal = rerun_refusal(job, interaction.guild_id)
        if refusal is not None or job is None:
            await self._edit(interaction, refusal or "I no longer know that job.")
            await self._forget(interaction.id)
            return
        await self.start(interaction, Options.rerun_of(job), parent_job_id=job.id, source="rerun_button")

    async def derive_from_button(self, interaction: discord.Interaction, job_id: int, index: int,
                                 derive: Derivation) -> None:
        """Upscale / Vary image ``index`` of a job: a child job from that image's stored PNG. The click (job,
        image, action) is recorded before the ack, like /imagine, so a crash right after it is replayed."""
        source = "upscale_button" if derive == "upscale" else "vary_button"
        if not await self.acknowledge(interaction, {"derive": derive, "image_index": index}, parent_job_id=job_id,
                                      source=source):
            return
        try:
            job = await repository.get_job(self.services.db, job_id)
            options = await derivation(self.services, job, index, derive, interaction.guild_id)
        except Exception:
            await self._forget(interaction.id)
            raise
        if isinstance(options, str):
            await self._edit(interaction, options)
            await self._forget(interaction.id)
            return
        await self.start(interaction, options, parent_job_id=job_id, parent_image_index=index, source=source)


def make_imagine_cog(settings: GenerationSettings) -> type[ImagineBase]:
    """The cog class with /imagine whose option bounds and choices are the configured ones."""
    max_steps, min_size, max_size = settings.max_steps, settings.min_size, settings.max_size
    choices: dict[str, list[app_commands.Choice[str]]] = {
        "scheduler": scheduler_choices(), "aspect": named_choices(ASPECT_PRESETS),
        "model": named_choices(settings.model_sources())}
    if settings.styles:  # Discord refuses an empty list of choices: no styles, a free text Discord will not check
        choices["style"] = named_choices(settings.styles)
    styles = ", ".join(settings.styles) or "none are configured on this bot"

    class Imagine(ImagineBase, name="Imagine"):
        @app_commands.command(name="imagine", description="Generate images from a text prompt")
        @app_commands.guild_only()
        @app_commands.describe(
            prompt="what to draw",
            negative_prompt="what to keep out of the picture",
            seed="same seed + same options = same image (random when empty)",
            steps=f"denoising steps (default {settings.default_steps})",
            guidance=f"how strictly to follow the prompt (default {settings.default_guidance:g})",
            width=f"multiple of 8 (default {settings.default_width})",
            height=f"multiple of 8 (default {settings.default_height})",
            count="how many images (seeds seed, seed+1, ...)",
            scheduler=f"sampler (default {settings.default_scheduler})",
            image="a PNG, JPEG or WebP picture to start from (img2img)",
            strength=f"with image: how much to change it, {MIN_STRENGTH:g} (keep) to {MAX_STRENGTH:g} (replace); "
                     f"default {settings.default_strength:g}",
            aspect="width:height at the usual pixel count, instead of width and height",
            model=f"which model (default {settings.default_model_name}, or the server's choice)"[:100],
            style=f"a prompt style: {styles}"[:100],
        )
        @app_commands.choices(**choices)
        async def imagine(
            self,
            interaction: discord.Interaction,
            prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
            negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
            seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
            steps: app_commands.Range[int, 1, max_steps] | None = None,
            guidance: app_commands.Range[float, MIN_GUIDANCE, MAX_GUIDANCE] | None = None,
            width: app_commands.Range[int, min_size, max_size] | None = None,
            height: app_commands.Range[int, min_size, max_size] | None = None,
            count: app_commands.Range[int, 1, MAX_COUNT] = 1,
            scheduler: str | None = None,
            image: discord.Attachment | None = None,
            strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
            aspect: str | None = None,
            model: str | None = None,
            style: str | None = None,
        ) -> None:
            typed = {"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps,
                     "guidance": guidance, "width": width, "height": height, "count": count, "scheduler": scheduler,
                     "strength": strength, "aspect": aspect, "model": model, "style": style}
            recorded = {name: value for name, value in typed.items() if value is not None}
            if image is not None:  # where to download it again: a replay after a crash does
                recorded["image"] = describe(image)
            # First, always: recorded, then acknowledged within Discord's 3 s whatever the queue or an upload does.
            if not await self.acknowledge(interaction, recorded):
                return
            self.services.metrics.acknowledged(interaction.created_at)
            init_image = None
            if image is not None:
                try:
                    init_image = (await read_attachment(image, self.services.settings.input_images,
                                                        self.services.settings.generation)).png
                except RequestError as exc:
                    await self._edit(interaction, refusal_message("invalid", message=exc.message))
                    await self._forget(interaction.id)
                    return
            options = Options.typed_by_member(init_image=init_image, **typed)
            await self.start(interaction, options)

    return Imagine


async def setup(bot: Any) -> None:
    await bot.add_cog(make_imagine_cog(bot.services.settings.generation)(bot))
