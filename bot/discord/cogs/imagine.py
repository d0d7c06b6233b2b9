"""/imagine and the 🔄 Rerun button: acknowledge at once, run the gate, then hand the job to delivery.

The command class is built by :func:`make_imagine_cog` from the config so the Discord-side bounds
(``app_commands.Range``: steps, size, ...) are the configured ones: Discord refuses out-of-range values before
they reach us, and :func:`generation.request.validate_request` still checks everything behind it.
(No ``from __future__ import annotations`` here: the Range bounds must be evaluated inside the factory.)
"""

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.replies import answer
from bot.gate.submission import Accepted, Options, Origin, Refusal, submit
from bot.storage.records import JobRecord
from generation.request import MAX_COUNT, MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MIN_GUIDANCE
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)


def scheduler_choices() -> list[app_commands.Choice[str]]:
    """The samplers this install offers, under their web-UI names (Discord allows 25 choices)."""
    from generation.schedulers import SAMPLER_LABELS, SCHEDULER_NAMES

    return [app_commands.Choice(name=SAMPLER_LABELS.get(n, n), value=n) for n in SCHEDULER_NAMES][:25]


def origin_of(interaction: discord.Interaction, *, parent_job_id: int | None = None,
              source: str = "imagine") -> Origin:
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
        source=source,
    )


class ImagineBase(commands.Cog, name="Imagine"):
    """Shared by the generated cog class: the flow after the interaction was deferred."""

    def __init__(self, bot: Any) -> None:
        self.bot = bot
        self.services = bot.services

    async def start(self, interaction: discord.Interaction, options: Options, *,
                    parent_job_id: int | None = None, source: str = "imagine") -> Accepted | Refusal:
        """Gate and queue; the deferred ephemeral response shows a refusal, or position then progress."""
        outcome = await submit(self.services.gate, options, origin_of(interaction, parent_job_id=parent_job_id,
                                                                  source=source))
        if isinstance(outcome, Refusal):
            await self._edit(interaction, outcome.message)
            return outcome
        # Registered before any await so a very fast result cannot overtake it.
        self.bot.delivery.watch(outcome.job, outcome.handle, interaction)
        return outcome

    async def _edit(self, interaction: discord.Interaction, content: str) -> None:
        try:
            await interaction.edit_original_response(content=content)
        except discord.HTTPException:
            log.info("could not edit the deferred response of interaction %s", interaction.id, exc_info=True)

    async def rerun_from_button(self, interaction: discord.Interaction, job: JobRecord) -> None:
        """🔄 Rerun: same prompt and parameters, new random seed, as a child job of the clicked one."""
        if interaction.guild_id is not None and job.guild_id not in (None, interaction.guild_id):
            await answer(interaction, "That job belongs to another server.")
            return
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        await self.start(interaction, Options.rerun_of(job), parent_job_id=job.id, source="rerun_button")


def make_imagine_cog(settings: GenerationSettings) -> type[ImagineBase]:
    """The cog class with /imagine whose option bounds are the configured ones."""
    max_steps, min_size, max_size = settings.max_steps, settings.min_size, settings.max_size
    choices = scheduler_choices()

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
        )
        @app_commands.choices(scheduler=choices)
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
            scheduler: app_commands.Choice[str] | None = None,
        ) -> None:
            # First, always: Discord wants an answer within 3 s whatever the queue or the database does.
            await interaction.response.defer(ephemeral=True, thinking=True)
            options = Options.of(
                prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance,
                width=width, height=height, count=count, scheduler=scheduler.value if scheduler else None,
            )
            await self.start(interaction, options)

    return Imagine


async def setup(bot: Any) -> None:
    await bot.add_cog(make_imagine_cog(bot.services.settings.generation)(bot))
