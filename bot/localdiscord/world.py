"""The local Discord's state: users, guilds, roles, channels, members, messages, attachments, commands.

Every change the bot could see is announced through the :class:`~bot.localdiscord.events.EventHub` (a gateway
dispatch for the bot, a subscriber event for tests), so the REST routes and the member actions change the
world only through these methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from bot.localdiscord.events import EventHub
from bot.localdiscord.models import (
    Attachment,
    Channel,
    Emoji,
    Guild,
    Interaction,
    Member,
    Message,
    Role,
    User,
    emoji_payload,
    snowflake,
)
from bot.localdiscord.permissions import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    EVERYONE_PERMISSIONS,
    INVITE_PERMISSIONS,
    MANAGE_GUILD,
)
from bot.localdiscord.settings import ServerSettings


class World:
    """All objects of the local Discord, by id, plus the default guild's shortcuts (:meth:`populate`)."""

    def __init__(self, settings: ServerSettings, hub: EventHub, *, bot_name: str) -> None:
        self.settings = settings
        self.hub = hub
        self.bot_user = User(snowflake(), bot_name, bot=True)
        self.application_id = self.bot_user.id
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.interactions: dict[int, Interaction] = {}
        self.interactions_by_token: dict[str, Interaction] = {}
        self.global_commands: dict[int, dict[str, Any]] = {}
        self.guild_commands: dict[int, dict[int, dict[str, Any]]] = {}
        self.members: dict[str, Member] = {}
        self.guild: Guild
        self.admin: Member
        self.general: Channel
        self.art: Channel
        self.nsfw_channel: Channel

    # ------------------------------------------------------------------ building the world

    def populate(self) -> None:
        """Default guild: #general, #art, #nsfw-art (NSFW); roles @everyone, Admin (administrator +
        manage guild), Artist and the bot's managed role; members olivia (owner), alice (Admin), bob, carol
        (Artist) and the bot."""
        owner = self.add_user("olivia")
        guild = self.add_guild("Imagine Test Guild", owner=owner)
        admin_role = self.add_role(guild, "Admin", ADMINISTRATOR | MANAGE_GUILD, position=3)
        artist = self.add_role(guild, "Artist", 0, position=1)
        self.guild = guild
        self.general = self.add_channel(guild, "general")
        self.art = self.add_channel(guild, "art")
        self.nsfw_channel = self.add_channel(guild, "nsfw-art", nsfw=True)
        self.members["olivia"] = guild.members[owner.id]
        self.admin = self.members["alice"] = self.add_member(guild, "alice", roles=[admin_role])
        self.members["bob"] = self.add_member(guild, "bob")
        self.members["carol"] = self.add_member(guild, "carol", roles=[artist])

    def add_user(self, username: str, *, bot: bool = False) -> User:
        user = User(snowflake(), username, bot=bot, global_name=username.title())
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, *, owner: User | None = None) -> Guild:
        """A guild with @everyone and the bot's managed role; the bot is a member. Dispatches GUILD_CREATE to
        connected sessions (so a guild added later shows up like the bot joining it)."""
        owner = owner or self.add_user(f"{name.lower().replace(' ', '-')}-owner")
        guild = Guild(snowflake(), name, owner.id)
        guild.roles.append(Role(guild.id, "@everyone", EVERYONE_PERMISSIONS, position=0))
        bot_role = Role(snowflake(), self.bot_user.username, INVITE_PERMISSIONS, position=2, managed=True,
                        bot_id=self.bot_user.id)
        guild.roles.append(bot_role)
        guild.members[owner.id] = Member(owner, guild.id)
        guild.members[self.bot_user.id] = Member(self.bot_user, guild.id, [bot_role.id])
        self.guilds[guild.id] = guild
        self.hub.dispatch("GUILD_CREATE", guild.payload(full=True), guild.id)
        return guild

    def add_role(self, guild: Guild, name: str, permissions: int = 0, *, position: int = 1) -> Role:
        role = Role(snowflake(), name, permissions, position=position)
        guild.roles.append(role)
        self.hub.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()}, guild.id)
        return role

    def add_channel(self, guild: Guild, name: str, *, nsfw: bool = False, topic: str | None = None) -> Channel:
        channel = Channel(snowflake(), name, guild.id, nsfw=nsfw, position=len(guild.channels), topic=topic)
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        self.hub.dispatch("CHANNEL_CREATE", channel.payload(), guild.id)
        return channel

    def add_member(self, guild: Guild, username: str, *, roles: Iterable[Role] = (), admin: bool = False) -> Member:
        """A new user joining ``guild``; ``admin=True`` also gives them the guild's first administrator role."""
        user = self.add_user(username)
        role_ids = [r.id for r in roles]
        if admin:
            admin_role = next((r for r in guild.roles if r.is_admin), None)
            if admin_role is None:
                admin_role = self.add_role(guild, "Admin", ADMINISTRATOR | MANAGE_GUILD, position=3)
            role_ids.append(admin_role.id)
        member = Member(user, guild.id, role_ids)
        guild.members[user.id] = member
        self.members.setdefault(username, member)
        self.hub.dispatch("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(guild.id)}, guild.id)
        return member

    def add_emoji(self, guild: Guild, name: str) -> Emoji:
        """A custom emoji of ``guild``; react with it as ``f"{name}:{id}"`` (the REST path form)."""
        emoji = Emoji(snowflake(), name)
        guild.emojis.append(emoji)
        self.hub.dispatch("GUILD_EMOJIS_UPDATE", {"guild_id": str(guild.id),
                                                  "emojis": [e.payload() for e in guild.emojis]}, guild.id)
        return emoji

    # ------------------------------------------------------------------ permissions

    def permissions_in(self, channel: Channel, member: Member | None = None) -> int:
        """``member``'s (default: the bot's) permissions in ``channel`` after overwrites; all of them in a DM."""
        guild = self.guild_of(channel)
        if guild is None:
            return ALL_PERMISSIONS
        member = member or guild.members[self.bot_user.id]
        return guild.permissions_in(member, channel)

    def withhold_permission(self, permissions: int, channel: Channel | None = None, *,
                            member: Member | None = None) -> None:
        """Deny ``permissions`` to ``member`` (default: the bot) with a member overwrite in ``channel`` (default:
        every channel of the default guild), as an admin would in the channel's settings."""
        self._overwrite(permissions, channel, member, allow=False)

    def grant_permission(self, permissions: int, channel: Channel | None = None, *,
                         member: Member | None = None) -> None:
        """Allow ``permissions`` to ``member`` (default: the bot) with a member overwrite in ``channel`` (default:
        every channel of the default guild), e.g. ``MANAGE_MESSAGES`` which the invite does not ask for."""
        self._overwrite(permissions, channel, member, allow=True)

    def clear_overwrites(self, channel: Channel | None = None, *, member: Member | None = None) -> None:
        """Remove ``member``'s (default: the bot's) overwrites in ``channel`` (default: every channel)."""
        for target, guild in self._overwrite_targets(channel):
            who = member or guild.members[self.bot_user.id]
            if target.overwrites.pop(who.id, None) is not None:
                target.overwrite_types.pop(who.id, None)
                self.hub.dispatch("CHANNEL_UPDATE", target.payload(), guild.id)

    def _overwrite_targets(self, channel: Channel | None) -> list[tuple[Channel, Guild]]:
        channels = [channel] if channel is not None else list(self.guild.channels)
        targets = []
        for target in channels:
            guild = self.guild_of(target)
            if guild is None:
                raise ValueError("a DM channel has no permission overwrites")
            targets.append((target, guild))
        return targets

    def _overwrite(self, permissions: int, channel: Channel | None, member: Member | None, *, allow: bool) -> None:
        for target, guild in self._overwrite_targets(channel):
            who = member or guild.members[self.bot_user.id]
            allowed, denied = target.overwrites.get(who.id, (0, 0))
            if allow:
                allowed, denied = allowed | permissions, denied & ~permissions
            else:
                allowed, denied = allowed & ~permissions, denied | permissions
            target.overwrites[who.id] = (allowed, denied)
            target.overwrite_types[who.id] = 1
            self.hub.dispatch("CHANNEL_UPDATE", target.payload(), guild.id)

    # ------------------------------------------------------------------ looking things up

    def channel_by_name(self, name: str, guild: Guild | None = None) -> Channel:
        guild = guild or self.guild
        for channel in guild.channels:
            if channel.name == name.lstrip("#"):
                return channel
        raise KeyError(f"no channel #{name} in {guild.name}; have {[c.name for c in guild.channels]}")

    def get_member(self, key: int | str, guild: Guild | None = None) -> Member:
        """A member of ``guild`` (default: the default guild) by user id or username (for the playground)."""
        guild = guild or self.guild
        for member in guild.members.values():
            if member.id == key or member.name == key or str(member.id) == str(key):
                return member
        raise KeyError(f"no member {key!r} in {guild.name}")

    def guild_of(self, channel: Channel) -> Guild | None:
        return self.guilds.get(channel.guild_id) if channel.guild_id is not None else None

    def bot_member(self, guild_id: int | None) -> Member | None:
        if guild_id is None:
            return None
        return self.guilds[guild_id].members.get(self.bot_user.id)

    def find_command(self, name: str, guild_id: int | None = None) -> dict[str, Any]:
        """The synced command ``name`` (guild commands of ``guild_id`` first, then global)."""
        stores: list[Iterable[dict[str, Any]]] = []
        if guild_id is not None:
            stores.append(self.guild_commands.get(guild_id, {}).values())
        stores.append(self.global_commands.values())
        for store in stores:
            for command in store:
                if command["name"] == name and command.get("type", 1) == 1:
                    return command
        synced = sorted({c["name"] for c in self.global_commands.values()}
                        | {c["name"] for s in self.guild_commands.values() for c in s.values()})
        raise LookupError(f"no synced slash command /{name}; synced: {synced} (did the bot run tree.sync()?)")

    def resolve_message(self, message: Message | int) -> Message:
        found = self.messages.get(message if isinstance(message, int) else message.id)
        if found is None or found.deleted:
            raise LookupError(f"no message {message!r}")
        return found

    def custom_emoji_ids(self) -> set[int]:
        """Every custom emoji of a guild the bot is in (the ones it may react with)."""
        return {e.id for g in self.guilds.values() if self.bot_user.id in g.members for e in g.emojis}

    def bot_messages(self, *, channel: Channel | int | None = None, include_deleted: bool = False) -> list[Message]:
        """Messages the bot created (channel messages, interaction responses, followups), oldest first."""
        channel_id = channel.id if isinstance(channel, Channel) else channel
        return [m for m in self.messages.values()
                if m.author.id == self.bot_user.id and (include_deleted or not m.deleted)
                and (channel_id is None or m.channel_id == channel_id)]

    # ------------------------------------------------------------------ attachments

    def attachment_url(self, attachment: Attachment) -> str:
        return f"{self.settings.base_url}/attachments/{attachment.id}/{quote(attachment.filename)}"

    def refresh_attachment_urls(self) -> None:
        """After start: the port is known now, so links made before it point at the right place."""
        for attachment in self.attachments.values():
            attachment.url = self.attachment_url(attachment)

    def store_attachment(self, filename: str, data: bytes, content_type: str | None = None,
                         description: str | None = None) -> Attachment:
        """Keep bytes in memory and give them a local URL (used for uploads and member attachments)."""
        if content_type is None or content_type == "application/octet-stream":
            content_type = guess_content_type(filename, data) or content_type
        attachment = Attachment(snowflake(), filename, data, content_type, description,
                                spoiler=filename.startswith("SPOILER_"))
        attachment.url = self.attachment_url(attachment)
        self.attachments[attachment.id] = attachment
        return attachment

    # ------------------------------------------------------------------ announcing message changes

    def publish_create(self, message: Message) -> None:
        self.messages[message.id] = message
        if not message.ephemeral:
            self.hub.dispatch("MESSAGE_CREATE", message.payload(self_id=self.bot_user.id), message.guild_id)
        self.hub.emit("message_create", {"message": message.to_event()})

    def publish_update(self, message: Message) -> None:
        if not message.ephemeral:
            self.hub.dispatch("MESSAGE_UPDATE", message.payload(self_id=self.bot_user.id), message.guild_id)
        self.hub.emit("message_update", {"message": message.to_event()})

    def delete_message(self, message: Message) -> None:
        message.deleted = True
        data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if not message.ephemeral:
            self.hub.dispatch("MESSAGE_DELETE", data, message.guild_id)
        self.hub.emit("message_delete", {**data, "ephemeral": message.ephemeral})

    def set_reaction(self, message: Message, emoji: str, user: User, present: bool) -> bool:
        """Add or remove ``user``'s ``emoji`` on ``message``; announces it when something changed."""
        users = message.reactions.setdefault(emoji, [])
        changed = (user.id not in users) if present else (user.id in users)
        if present and changed:
            users.append(user.id)
        elif not present and changed:
            users.remove(user.id)
        if not users:
            message.reactions.pop(emoji, None)
        if changed:
            self._announce_reaction(message, emoji, user, present)
        return changed

    def _announce_reaction(self, message: Message, emoji: str, user: User, added: bool) -> None:
        data: dict[str, Any] = {
            "user_id": str(user.id), "channel_id": str(message.channel_id), "message_id": str(message.id),
            "emoji": emoji_payload(emoji), "burst": False, "type": 0,
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        if added:
            data["message_author_id"] = str(message.author.id)
            data["burst_colors"] = []
            member = self.guilds[message.guild_id].members.get(user.id) if message.guild_id else None
            if member is not None:
                data["member"] = member.payload()
        self.hub.dispatch("MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE", data, message.guild_id)
        self.hub.emit("reaction_add" if added else "reaction_remove",
                      {"message_id": str(message.id), "channel_id": str(message.channel_id), "emoji": emoji,
                       "user_id": str(user.id), "count": len(message.reactions.get(emoji, []))})


def guess_content_type(filename: str, data: bytes) -> str | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if filename.endswith((".txt", ".log")):
        return "text/plain; charset=utf-8"
    if filename.endswith(".json"):
        return "application/json"
    return None
