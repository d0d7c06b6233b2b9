"""What the gateway refuses at IDENTIFY, and which intent each dispatch needs.

https://discord.com/developers/docs/events/gateway (close event codes; gateway intents; sharding):
an intent value with unknown bits closes with 4013 "Invalid intent(s)"; a privileged intent (GUILD_MEMBERS,
GUILD_PRESENCES, MESSAGE_CONTENT) the application has not enabled closes with 4014 "Disallowed intent(s)";
``shard`` must be ``[shard_id, num_shards]`` with ``0 <= shard_id < num_shards`` (4010 "Invalid shard");
``large_threshold`` is documented as "value between 50 and 250" and Discord has no dedicated code for it,
so it gets 4002 "Decode error" ("you sent an invalid payload"). Guild events go only to the shard with
``shard_id = (guild_id >> 22) % num_shards``; DMs go to shard 0.
"""

from __future__ import annotations

from typing import Any

GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_MODERATION = 1 << 2
GUILD_EXPRESSIONS = 1 << 3
GUILD_INTEGRATIONS = 1 << 4
GUILD_WEBHOOKS = 1 << 5
GUILD_INVITES = 1 << 6
GUILD_VOICE_STATES = 1 << 7
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
GUILD_MESSAGE_TYPING = 1 << 11
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_REACTIONS = 1 << 13
DIRECT_MESSAGE_TYPING = 1 << 14
MESSAGE_CONTENT = 1 << 15
GUILD_SCHEDULED_EVENTS = 1 << 16
AUTO_MODERATION_CONFIGURATION = 1 << 20
AUTO_MODERATION_EXECUTION = 1 << 21
GUILD_MESSAGE_POLLS = 1 << 24
DIRECT_MESSAGE_POLLS = 1 << 25

KNOWN_INTENTS = (
    GUILDS | GUILD_MEMBERS | GUILD_MODERATION | GUILD_EXPRESSIONS | GUILD_INTEGRATIONS | GUILD_WEBHOOKS
    | GUILD_INVITES | GUILD_VOICE_STATES | GUILD_PRESENCES | GUILD_MESSAGES | GUILD_MESSAGE_REACTIONS
    | GUILD_MESSAGE_TYPING | DIRECT_MESSAGES | DIRECT_MESSAGE_REACTIONS | DIRECT_MESSAGE_TYPING | MESSAGE_CONTENT
    | GUILD_SCHEDULED_EVENTS | AUTO_MODERATION_CONFIGURATION | AUTO_MODERATION_EXECUTION | GUILD_MESSAGE_POLLS
    | DIRECT_MESSAGE_POLLS
)
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT

# Event -> (intent needed in a guild, intent needed in a DM); None: always sent.
EVENT_INTENTS: dict[str, tuple[int, int] | None] = {
    "GUILD_CREATE": (GUILDS, GUILDS), "GUILD_UPDATE": (GUILDS, GUILDS), "GUILD_DELETE": (GUILDS, GUILDS),
    "GUILD_ROLE_CREATE": (GUILDS, GUILDS), "GUILD_ROLE_UPDATE": (GUILDS, GUILDS),
    "GUILD_ROLE_DELETE": (GUILDS, GUILDS), "CHANNEL_CREATE": (GUILDS, GUILDS),
    "CHANNEL_UPDATE": (GUILDS, GUILDS), "CHANNEL_DELETE": (GUILDS, GUILDS),
    "GUILD_MEMBER_ADD": (GUILD_MEMBERS, GUILD_MEMBERS), "GUILD_MEMBER_UPDATE": (GUILD_MEMBERS, GUILD_MEMBERS),
    "GUILD_MEMBER_REMOVE": (GUILD_MEMBERS, GUILD_MEMBERS),
    "MESSAGE_CREATE": (GUILD_MESSAGES, DIRECT_MESSAGES), "MESSAGE_UPDATE": (GUILD_MESSAGES, DIRECT_MESSAGES),
    "MESSAGE_DELETE": (GUILD_MESSAGES, DIRECT_MESSAGES),
    "MESSAGE_REACTION_ADD": (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE": (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE_ALL": (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    "MESSAGE_REACTION_REMOVE_EMOJI": (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    "INTERACTION_CREATE": None,
}
MESSAGE_EVENTS = ("MESSAGE_CREATE", "MESSAGE_UPDATE")
CONTENT_FIELDS = ("content", "embeds", "attachments", "components", "poll")

MIN_LARGE_THRESHOLD, MAX_LARGE_THRESHOLD = 50, 250

DECODE_ERROR, INVALID_SHARD, INVALID_INTENTS, DISALLOWED_INTENTS = 4002, 4010, 4013, 4014


def identify_refusal(data: dict[str, Any], *, enabled_privileged: int) -> tuple[int, str] | None:
    """The close code and reason for an IDENTIFY Discord would refuse, or None."""
    intents = data.get("intents")
    if isinstance(intents, bool) or not isinstance(intents, int) or intents < 0 or intents & ~KNOWN_INTENTS:
        return INVALID_INTENTS, "Invalid intent(s)."
    if intents & PRIVILEGED_INTENTS & ~enabled_privileged:
        return DISALLOWED_INTENTS, "Disallowed intent(s)."
    shard = data.get("shard")
    if shard is not None and not (isinstance(shard, list) and len(shard) == 2
                                  and all(isinstance(n, int) for n in shard) and 0 <= shard[0] < shard[1]):
        return INVALID_SHARD, "Invalid shard."
    threshold = data.get("large_threshold")
    if threshold is not None and not (isinstance(threshold, int)
                                      and MIN_LARGE_THRESHOLD <= threshold <= MAX_LARGE_THRESHOLD):
        return DECODE_ERROR, "Error while decoding payload: large_threshold must be between 50 and 250."
    return None


def shard_of(guild_id: int | None, num_shards: int) -> int:
    return 0 if guild_id is None else (guild_id >> 22) % num_shards


def needed_intent(event: str, *, in_guild: bool) -> int:
    """The intent a session needs to get ``event`` (0: none)."""
    pair = EVENT_INTENTS.get(event)
    if pair is None:
        return 0
    return pair[0] if in_guild else pair[1]
