"""Discord permission bits and Discord's own algorithm for a member's permissions in a channel.

Pure functions on integers (no model imports), following
https://discord.com/developers/docs/topics/permissions#permission-overwrites: base permissions from @everyone
and the member's roles (owner and ADMINISTRATOR get everything), then the channel's overwrites in the order
@everyone -> roles (all denies, then all allows) -> the member; then the implicit rules (no VIEW_CHANNEL means
nothing; no SEND_MESSAGES means no attachments, embeds, mentions of everyone or TTS).
"""

from __future__ import annotations

from collections.abc import Iterable

CREATE_INSTANT_INVITE = 1 << 0
KICK_MEMBERS = 1 << 1
BAN_MEMBERS = 1 << 2
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
SEND_TTS_MESSAGES = 1 << 12
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
ALL_PERMISSIONS = (1 << 53) - 1

NAMES = {
    CREATE_INSTANT_INVITE: "Create Invite", KICK_MEMBERS: "Kick Members", BAN_MEMBERS: "Ban Members",
    ADMINISTRATOR: "Administrator", MANAGE_CHANNELS: "Manage Channels", MANAGE_GUILD: "Manage Server",
    ADD_REACTIONS: "Add Reactions", VIEW_CHANNEL: "View Channel", SEND_MESSAGES: "Send Messages",
    SEND_TTS_MESSAGES: "Send TTS Messages", MANAGE_MESSAGES: "Manage Messages", EMBED_LINKS: "Embed Links",
    ATTACH_FILES: "Attach Files", READ_MESSAGE_HISTORY: "Read Message History",
    MENTION_EVERYONE: "Mention Everyone", USE_EXTERNAL_EMOJIS: "Use External Emojis",
    CHANGE_NICKNAME: "Change Nickname", USE_APPLICATION_COMMANDS: "Use Application Commands",
}

# What a new guild's @everyone role gets on Discord (the subset that matters to a text-only bot).
EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE | ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES
    | READ_MESSAGE_HISTORY | MENTION_EVERYONE | USE_EXTERNAL_EMOJIS | CHANGE_NICKNAME | USE_APPLICATION_COMMANDS
)
# Exactly what README's invite link asks for; the bot's managed role gets these and nothing more.
INVITE_PERMISSIONS = VIEW_CHANNEL | SEND_MESSAGES | ATTACH_FILES | EMBED_LINKS | ADD_REACTIONS | READ_MESSAGE_HISTORY

# Lost implicitly without SEND_MESSAGES (Discord's "implicit permissions").
NEEDS_SEND_MESSAGES = ATTACH_FILES | EMBED_LINKS | MENTION_EVERYONE | SEND_TTS_MESSAGES

Overwrite = tuple[int, int]  # (allow, deny)


def base_permissions(everyone: int, roles: Iterable[int], *, owner: bool) -> int:
    """Guild-level permissions: @everyone's bits OR the member's roles'; the owner and administrators get all."""
    if owner:
        return ALL_PERMISSIONS
    bits = everyone
    for role in roles:
        bits |= role
    return ALL_PERMISSIONS if bits & ADMINISTRATOR else bits


def channel_permissions(base: int, everyone: Overwrite | None, roles: Iterable[Overwrite],
                        member: Overwrite | None) -> int:
    """Apply a channel's overwrites to ``base`` in Discord's order, then the implicit rules."""
    if base & ADMINISTRATOR:
        return ALL_PERMISSIONS
    bits = base
    if everyone is not None:
        bits = (bits & ~everyone[1]) | everyone[0]
    allow = deny = 0
    for role_allow, role_deny in roles:
        allow |= role_allow
        deny |= role_deny
    bits = (bits & ~deny) | allow
    if member is not None:
        bits = (bits & ~member[1]) | member[0]
    if not bits & VIEW_CHANNEL:
        return 0
    if not bits & SEND_MESSAGES:
        bits &= ~NEEDS_SEND_MESSAGES
    return bits


def describe(bits: int) -> str:
    """``"Attach Files, Embed Links"`` for error messages and logs."""
    return ", ".join(name for bit, name in NAMES.items() if bits & bit) or "none"
