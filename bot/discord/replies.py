"""Answering an interaction whatever state it is in, so no command is ever left at "thinking…"."""

from __future__ import annotations

import logging
from typing import Any

import discord

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on my side. The error was logged for the bot's admin; please try again."


async def answer(interaction: discord.Interaction, content: str, **kwargs: Any) -> None:
    """Reply ephemerally whether or not the interaction was already acknowledged (never leaves it unanswered)."""
    kwargs.setdefault("ephemeral", True)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(content, **kwargs)
        elif interaction.response.type == discord.InteractionResponseType.deferred_channel_message:
            # Deferred with "thinking": the answer replaces the placeholder (ephemeral if the defer was).
            kwargs.pop("ephemeral", None)
            await interaction.edit_original_response(content=content, **kwargs)
        else:
            await interaction.followup.send(content, **kwargs)
    except discord.HTTPException:
        log.warning("could not answer interaction %s", interaction.id, exc_info=True)
