"""Refusing what the bot's permissions do not allow (403), and reactions with an unknown emoji (10014).

Which route needs what: https://discord.com/developers/docs/resources/message (create: VIEW_CHANNEL and
SEND_MESSAGES, plus EMBED_LINKS for embeds, ATTACH_FILES for files and READ_MESSAGE_HISTORY for a reply;
reading history and reacting: READ_MESSAGE_HISTORY; a reaction nobody made yet: ADD_REACTIONS; removing
someone else's reaction, clearing reactions or deleting someone else's message: MANAGE_MESSAGES).
"""

from __future__ import annotations

import unicodedata

from bot.localdiscord.errors import DiscordError
from bot.localdiscord.permissions import VIEW_CHANNEL, describe

KEYCAP = "\u20e3"


def require(have: int, need: int) -> None:
    """403 Missing Access (50001) without VIEW_CHANNEL, else 403 Missing Permissions (50013)."""
    if need & VIEW_CHANNEL and not have & VIEW_CHANNEL:
        raise DiscordError(403, 50001, "Missing Access")
    missing = need & ~have
    if missing:
        raise DiscordError(403, 50013, f"Missing Permissions: {describe(missing)}")


def unknown_emoji() -> DiscordError:
    return DiscordError(400, 10014, "Unknown Emoji")


def check_emoji(emoji: str, custom_emoji_ids: set[int]) -> None:
    """``name:id`` must be a custom emoji of a guild the bot is in; anything else must be an emoji, not a word.

    The unicode check only refuses what clearly is no emoji (letters or digits outside a keycap, such as
    ``star`` or ``:star:``); it does not try to know every emoji sequence.
    """
    if ":" in emoji:
        _, _, emoji_id = emoji.rpartition(":")
        if not emoji_id.isdigit() or int(emoji_id) not in custom_emoji_ids:
            raise unknown_emoji()
        return
    if not emoji or any(unicodedata.category(c)[0] in "LN" and KEYCAP not in emoji for c in emoji) \
            or emoji.isascii():
        raise unknown_emoji()
