"""In-memory Discord objects of the local server, each able to render the JSON payload Discord v10 sends.

Payload shapes follow what discord.py 2.x reads in ``state.py`` / ``message.py`` / ``member.py`` (required keys
such as ``discriminator``, ``flags``, ``edited_timestamp`` are always present so the real client parses them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from bot.localdiscord.permissions import ADMINISTRATOR, Overwrite, base_permissions, channel_permissions

T = TypeVar("T")

Upload = tuple[int, str, bytes, "str | None"]  # a multipart file: (n of files[n], filename, data, content type)

DISCORD_EPOCH_MS = 1420070400000

# Message flags.
EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Application command option types.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
)

_counter = itertools.count()
_counter_lock = threading.Lock()


def snowflake() -> int:
    """A unique, increasing Discord-style id (timestamp in the high bits, so ordering by id is by time)."""
    with _counter_lock:
        increment = next(_counter) & 0xFFF
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (1 << 17) | increment
        global _last
        if value <= _last:
            value = _last + 1
        _last = value
        return value


_last = 0


def iso_now() -> str:
    """Timestamp in Discord's ISO 8601 form."""
    return datetime.now(UTC).isoformat()


@dataclass
class User:
    """A Discord account (a member's user, or the bot)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "username": self.username, "discriminator": "0", "global_name": self.global_name,
            "avatar": None, "bot": self.bot, "public_flags": 0, "flags": 0, "banner": None, "accent_color": None,
        }


@dataclass
class Role:
    """A guild role; ``permissions`` is the bit set it grants."""

    id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    managed: bool = False
    bot_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return bool(self.permissions & ADMINISTRATOR)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "name": self.name, "permissions": str(self.permissions), "position": self.position,
            "color": self.color, "hoist": False, "managed": self.managed, "mentionable": False, "icon": None,
            "unicode_emoji": None, "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class Channel:
    """A text channel (type 0) in a guild, or a DM (type 1, ``guild_id`` None)."""

    id: int
    name: str
    guild_id: int | None
    type: int = 0
    nsfw: bool = False
    position: int = 0
    topic: str | None = None
    recipients: list[User] = field(default_factory=list)
    # Permission overwrites by role or user id: (allow, deny); the @everyone role's id is the guild id.
    overwrites: dict[int, Overwrite] = field(default_factory=dict)
    overwrite_types: dict[int, int] = field(default_factory=dict)  # id -> 0 role, 1 member

    def payload(self) -> dict[str, Any]:
        if self.type == 1:
            return {"id": str(self.id), "type": 1, "last_message_id": None, "flags": 0,
                    "recipients": [u.payload() for u in self.recipients]}
        data: dict[str, Any] = {
            "id": str(self.id), "type": self.type, "name": self.name, "position": self.position,
            "nsfw": self.nsfw, "topic": self.topic, "parent_id": None,
            "permission_overwrites": [
                {"id": str(target), "type": self.overwrite_types.get(target, 0), "allow": str(allow),
                 "deny": str(deny)} for target, (allow, deny) in self.overwrites.items()],
            "rate_limit_per_user": 0, "last_message_id": None, "flags": 0,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        return data

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass
class Member:
    """A user's membership in one guild; member actions (commands, reactions, buttons) act as one."""

    user: User
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.username

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self, *, permissions: int | None = None, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.role_ids], "nick": self.nick, "avatar": None, "banner": None,
            "joined_at": self.joined_at, "premium_since": None, "deaf": False, "mute": False, "pending": False,
            "flags": 0, "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class Guild:
    """A guild with its roles (``roles[0]`` is @everyone, id == guild id), channels and members."""

    id: int
    name: str
    owner_id: int
    roles: list[Role] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    emojis: list[Emoji] = field(default_factory=list)

    def role(self, role_id: int) -> Role | None:
        return next((r for r in self.roles if r.id == role_id), None)

    def channel(self, channel_id: int) -> Channel | None:
        return next((c for c in self.channels if c.id == channel_id), None)

    def permissions_of(self, member: Member) -> int:
        """Guild-level permissions the way Discord computes them (owner and administrator get everything)."""
        everyone = self.role(self.id)
        roles = [r.permissions for r in self.roles if r.id in member.role_ids and r.id != self.id]
        return base_permissions(everyone.permissions if everyone else 0, roles, owner=member.id == self.owner_id)

    def permissions_in(self, member: Member, channel: Channel) -> int:
        """The member's permissions in ``channel`` after its overwrites (Discord's algorithm)."""
        overwrites = channel.overwrites
        roles = [overwrites[r] for r in member.role_ids if r in overwrites and r != self.id]
        return channel_permissions(self.permissions_of(member), overwrites.get(self.id), roles,
                                   overwrites.get(member.id))

    def payload(self, *, full: bool = False) -> dict[str, Any]:
        """``full`` is the GUILD_CREATE form (channels, members); otherwise the REST ``GET /guilds/{id}`` form."""
        data: dict[str, Any] = {
            "id": str(self.id), "name": self.name, "icon": None, "splash": None, "discovery_splash": None,
            "banner": None, "description": None, "owner_id": str(self.owner_id), "afk_channel_id": None,
            "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": [r.payload() for r in self.roles],
            "emojis": [e.payload() for e in self.emojis], "stickers": [],
            "features": [], "mfa_level": 0, "application_id": None, "system_channel_id": None,
            "system_channel_flags": 0, "rules_channel_id": None, "vanity_url_code": None, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": "en-US", "public_updates_channel_id": None,
            "nsfw_level": 0, "premium_progress_bar_enabled": False, "max_members": 500000,
            "approximate_member_count": len(self.members), "approximate_presence_count": 0,
        }
        if full:
            data.update({
                "unavailable": False, "large": False, "member_count": len(self.members),
                "joined_at": iso_now(), "channels": [c.payload() for c in self.channels],
                "members": [m.payload() for m in self.members.values()], "threads": [], "presences": [],
                "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
                "soundboard_sounds": [],
            })
        return data


@dataclass
class Emoji:
    """A guild's custom emoji; reactions name it ``name:id`` in REST paths."""

    id: int
    name: str

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "roles": [], "require_colons": True, "managed": False,
                "animated": False, "available": True}


@dataclass
class Attachment:
    """A stored upload; served by the server at ``url`` so messages carry a fetchable link."""

    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    url: str = ""
    spoiler: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "filename": self.filename, "size": self.size, "url": self.url,
            "proxy_url": self.url, "content_type": self.content_type, "flags": 0,
        }
        if self.description is not None:
            data["description"] = self.description
        if self.content_type == "image/png" and self.data[:8] == b"\x89PNG\r\n\x1a\n" and len(self.data) >= 24:
            data["width"] = int.from_bytes(self.data[16:20], "big")
            data["height"] = int.from_bytes(self.data[20:24], "big")
        return data


@dataclass
class Message:
    """A channel message as the local server stores it (created by the bot, a webhook/interaction or a member).

    ``interaction_id`` links interaction responses and followups to the interaction that caused them;
    ``ephemeral`` messages are visible only to ``visible_to`` and are never dispatched over the gateway.
    """

    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: str | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    reactions: dict[str, list[int]] = field(default_factory=dict)
    visible_to: int | None = None
    deleted: bool = False
    edits: int = 0
    tts: bool = False
    pinned: bool = False
    member: Member | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True for a deferred "Bot is thinking..." response not yet edited."""
        return bool(self.flags & LOADING)

    def attachment(self, filename: str) -> Attachment:
        """The attachment with that filename (KeyError lists what is there)."""
        for item in self.attachments:
            if item.filename == filename:
                return item
        raise KeyError(f"no attachment {filename!r}; have {[a.filename for a in self.attachments]}")

    def custom_ids(self) -> list[str]:
        """Every ``custom_id`` among this message's components (buttons, selects), depth first."""
        found: list[str] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if "custom_id" in item:
                    found.append(item["custom_id"])
                walk(item.get("components", []))
                if isinstance(item.get("accessory"), dict):
                    walk([item["accessory"]])

        walk(self.components)
        return found

    def payload(self, *, self_id: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "channel_id": str(self.channel_id), "author": self.author.payload(),
            "content": self.content, "timestamp": self.timestamp, "edited_timestamp": self.edited_timestamp,
            "tts": self.tts, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [a.payload() for a in self.attachments], "embeds": list(self.embeds),
            "pinned": self.pinned, "type": 20 if (self.interaction_metadata or {}).get("type") == 2 else 0,
            "flags": self.flags, "components": list(self.components),
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.member is not None:
            data["member"] = self.member.payload(with_user=False)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
            data["type"] = 19
        if self.reactions:
            data["reactions"] = [
                {"emoji": emoji_payload(e), "count": len(users), "me": self_id in users, "me_burst": False,
                 "burst_colors": [], "count_details": {"burst": 0, "normal": len(users)}}
                for e, users in self.reactions.items() if users
            ]
        return data

    def to_event(self) -> dict[str, Any]:
        """JSON-able form for subscribers (the playground): the payload plus who may see it."""
        data = self.payload()
        data["ephemeral"] = self.ephemeral
        data["visible_to"] = str(self.visible_to) if self.visible_to is not None else None
        data["interaction_id"] = str(self.interaction_id) if self.interaction_id is not None else None
        return data


def emoji_payload(emoji: str) -> dict[str, Any]:
    """``"🔄"`` -> unicode emoji; ``"name:123"`` (the REST path form) -> custom emoji."""
    if ":" in emoji:
        name, _, emoji_id = emoji.rpartition(":")
        return {"id": emoji_id, "name": name or None, "animated": False}
    return {"id": None, "name": emoji}


@dataclass
class Interaction:
    """One interaction a member action created, with what the bot answered.

    ``response_type`` is the callback type (4, 5, 6, 7, 9...) once acknowledged; ``message_ids`` are the
    original response (or the updated component message) and followups, in order.
    """

    id: int
    token: str
    type: int
    member: Member | None
    user: User
    channel: Channel
    payload: dict[str, Any]
    created_monotonic: float
    created_wall: float
    store: dict[int, Message] = field(repr=False, default_factory=dict)  # the server's messages, by id
    waiter: Waiter = field(repr=False, default_factory=lambda: Waiter())
    acked_monotonic: float | None = None
    response_type: int | None = None
    response_data: dict[str, Any] | None = None
    original_message_id: int | None = None
    component_message_id: int | None = None
    component_edits_at_start: int = 0
    message_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    late_callback: bool = False

    @property
    def ack_latency(self) -> float | None:
        """Seconds from dispatch to the callback arriving (None until acknowledged)."""
        if self.acked_monotonic is None:
            return None
        return self.acked_monotonic - self.created_monotonic

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def messages(self) -> list[Message]:
        """Messages linked to this interaction (original/updated message first, then followups)."""
        return [self.store[i] for i in self.message_ids if i in self.store]

    @property
    def original(self) -> Message | None:
        if self.original_message_id is None:
            return None
        return self.store.get(self.original_message_id)

    async def wait_for_ack(self, timeout: float = 5.0) -> int:  # noqa: ASYNC109
        """Wait for the interaction callback; returns its type."""
        await self.waiter.until(lambda: self.response_type, timeout, f"ack of interaction {self.id}")
        assert self.response_type is not None
        return self.response_type

    async def wait_for_response(self, timeout: float = 10.0, *, predicate: Any = None) -> Message:  # noqa: ASYNC109
        """The first message a member would see as the answer: a non-loading original, an updated component
        message, or a followup (optionally also matching ``predicate``)."""

        def find() -> Message | None:
            for message in self.messages:
                if message.loading or message.deleted:
                    continue
                if message.id == self.component_message_id and message.edits == self.component_edits_at_start:
                    continue  # a deferred update (type 6) shows nothing until the bot edits the message
                if predicate is None or predicate(message):
                    return message
            return None

        return await self.waiter.until(find, timeout, f"a response to interaction {self.id}")

    async def wait_for_modal(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        return await self.waiter.until(lambda: self.modal, timeout, f"a modal for interaction {self.id}")


@dataclass
class RestCall:
    """One REST request the bot made (for assertions on what was called and when)."""

    method: str
    path: str
    status: int
    time: float
    query: dict[str, str] = field(default_factory=dict)
    json: Any = None
    files: list[str] = field(default_factory=list)


@dataclass
class Refusal:
    """A request (or gateway IDENTIFY) the local server refused the way Discord would.

    ``method`` is ``"GATEWAY"`` for a closed websocket, with ``status`` the close code; ``errors`` is the
    50035 field tree when there is one.
    """

    method: str
    path: str
    status: int
    code: int
    message: str
    errors: dict[str, Any] | None = None
    time: float = field(default_factory=time.time)

    def __str__(self) -> str:
        errors = f" {self.errors}" if self.errors else ""
        return f"{self.method} {self.path} -> {self.status} code {self.code}: {self.message}{errors}"


class Waiter:
    """Wakes coroutines waiting for a state change (``asyncio.Condition`` without the lock ceremony).

    ``context`` adds what was happening to a timeout's message (the server passes its last REST calls).
    """

    def __init__(self, context: Callable[[], str] = lambda: "") -> None:
        self._event = asyncio.Event()
        self.context = context

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def until(self, check: Callable[[], T | None], timeout: float, what: str) -> T:  # noqa: ASYNC109
        """Poll ``check`` at every change (and at least every 0.25 s) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}{self.context()}")
            await self.wait(min(remaining, 0.25))
