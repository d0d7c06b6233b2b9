"""REST routes for channels, their messages and reactions (what a bot does outside interactions).

Unlike the interaction webhook, these act as the bot's member: each checks the bot's permissions in the
channel (``rules/access.py``) after the body's own rules.
"""

from __future__ import annotations

from aiohttp import web

from bot.localdiscord.errors import DiscordError, as_int, json_response, no_content, unknown
from bot.localdiscord.messages import MessageWriter
from bot.localdiscord.models import Channel, Message
from bot.localdiscord.permissions import (
    ADD_REACTIONS,
    ATTACH_FILES,
    EMBED_LINKS,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
)
from bot.localdiscord.router import Call, Router
from bot.localdiscord.rules.access import check_emoji, require
from bot.localdiscord.rules.messages import CHANNEL_MESSAGE_FLAGS
from bot.localdiscord.world import World


class MessageRoutes:
    def __init__(self, world: World, writer: MessageWriter) -> None:
        self.world = world
        self.writer = writer

    def register(self, router: Router) -> None:
        r = router.add
        r("GET", "/channels/{channel_id}", self.get_channel)
        r("POST", "/channels/{channel_id}/typing", self.typing)
        r("GET", "/channels/{channel_id}/messages", self.list_messages)
        r("POST", "/channels/{channel_id}/messages", self.create_message)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        reactions = "/channels/{channel_id}/messages/{message_id}/reactions"
        r("PUT", reactions + "/{emoji}/@me", self.add_own_reaction)
        r("DELETE", reactions + "/{emoji}/@me", self.remove_own_reaction)
        r("DELETE", reactions + "/{emoji}/{user_id}", self.remove_user_reaction)
        r("GET", reactions + "/{emoji}", self.list_reaction_users)
        r("DELETE", reactions + "/{emoji}", self.clear_emoji)
        r("DELETE", reactions, self.clear_reactions)

    # ------------------------------------------------------------------ lookups

    def channel(self, call: Call) -> Channel:
        channel = self.world.channels.get(as_int(call.params["channel_id"]))
        if channel is None:
            raise unknown("Channel", 10003)
        return channel

    def message(self, call: Call, channel: Channel) -> Message:
        message = self.world.messages.get(as_int(call.params["message_id"]))
        if message is None or message.deleted or message.channel_id != channel.id:
            raise unknown("Message", 10008)
        return message

    def require(self, channel: Channel, need: int) -> None:
        """403 unless the bot has ``need`` (and VIEW_CHANNEL) in ``channel``."""
        require(self.world.permissions_in(channel), need | VIEW_CHANNEL)

    def respond(self, message: Message) -> web.Response:
        return json_response(message.payload(self_id=self.world.bot_user.id))

    # ------------------------------------------------------------------ channels and messages

    async def get_channel(self, call: Call) -> web.Response:
        channel = self.channel(call)
        self.require(channel, VIEW_CHANNEL)
        return json_response(channel.payload())

    async def typing(self, call: Call) -> web.Response:
        self.require(self.channel(call), SEND_MESSAGES)
        return no_content()

    async def list_messages(self, call: Call) -> web.Response:
        channel = self.channel(call)
        self.require(channel, VIEW_CHANNEL)
        if not self.world.permissions_in(channel) & READ_MESSAGE_HISTORY:
            return json_response([])  # Discord: "no messages will be returned"
        limit = max(1, min(100, int(call.query.get("limit", 50))))
        items = [m for m in self.world.messages.values()
                 if m.channel_id == channel.id and not m.deleted and not m.ephemeral]
        before, after, around = (call.query.get(k) for k in ("before", "after", "around"))
        if before:
            items = [m for m in items if m.id < int(before)]
        if after:
            items = [m for m in items if m.id > int(after)]
            items = items[:limit]
        if around:
            pivot = int(around)
            items.sort(key=lambda m: abs(m.id - pivot))
            items = sorted(items[:limit], key=lambda m: m.id)
        items = sorted(items, key=lambda m: m.id, reverse=True)[:limit]
        return json_response([m.payload(self_id=self.world.bot_user.id) for m in items])

    async def create_message(self, call: Call) -> web.Response:
        channel = self.channel(call)
        body = call.json or {}
        self.writer.check(body, call.files, allowed_flags=CHANNEL_MESSAGE_FLAGS, channel=channel)
        self.require(channel, self._needs(body, call) | SEND_MESSAGES
                     | (READ_MESSAGE_HISTORY if body.get("message_reference") else 0))
        message = self.writer.create(channel, body, call.files, allowed_flags=CHANNEL_MESSAGE_FLAGS, checked=True)
        self.world.publish_create(message)
        return self.respond(message)

    @staticmethod
    def _needs(body: dict[str, object], call: Call) -> int:
        """EMBED_LINKS for embeds, ATTACH_FILES for uploads."""
        return (EMBED_LINKS if body.get("embeds") else 0) | (ATTACH_FILES if call.files else 0)

    async def get_message(self, call: Call) -> web.Response:
        channel = self.channel(call)
        self.require(channel, READ_MESSAGE_HISTORY)
        message = self.message(call, channel)
        if message.ephemeral:
            raise unknown("Message", 10008)
        return self.respond(message)

    async def edit_message(self, call: Call) -> web.Response:
        channel = self.channel(call)
        message = self.message(call, channel)
        if message.author.id != self.world.bot_user.id or message.ephemeral:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body = call.json or {}
        self.writer.check(body, call.files, allowed_flags=0, existing=message)
        self.require(channel, self._needs(body, call))
        self.writer.edit(message, body, call.files, checked=True)
        self.world.publish_update(message)
        return self.respond(message)

    async def delete_message(self, call: Call) -> web.Response:
        channel = self.channel(call)
        message = self.message(call, channel)
        self.require(channel, 0 if message.author.id == self.world.bot_user.id else MANAGE_MESSAGES)
        self.world.delete_message(message)
        return no_content()

    # ------------------------------------------------------------------ reactions

    async def add_own_reaction(self, call: Call) -> web.Response:
        channel = self.channel(call)
        message = self.message(call, channel)
        emoji = call.params["emoji"]
        check_emoji(emoji, self.world.custom_emoji_ids())
        # A reaction someone already made only needs history; a new one also needs Add Reactions.
        self.require(channel, READ_MESSAGE_HISTORY | (0 if message.reactions.get(emoji) else ADD_REACTIONS))
        self.world.set_reaction(message, emoji, self.world.bot_user, True)
        return no_content()

    async def remove_own_reaction(self, call: Call) -> web.Response:
        message = self.message(call, self.channel(call))
        check_emoji(call.params["emoji"], self.world.custom_emoji_ids())
        self.world.set_reaction(message, call.params["emoji"], self.world.bot_user, False)
        return no_content()

    async def remove_user_reaction(self, call: Call) -> web.Response:
        channel = self.channel(call)
        message = self.message(call, channel)
        check_emoji(call.params["emoji"], self.world.custom_emoji_ids())
        user = self.world.users.get(as_int(call.params["user_id"]))
        if user is None:
            raise unknown("User", 10013)
        if user.id != self.world.bot_user.id:
            self.require(channel, MANAGE_MESSAGES)
        self.world.set_reaction(message, call.params["emoji"], user, False)
        return no_content()

    async def list_reaction_users(self, call: Call) -> web.Response:
        message = self.message(call, self.channel(call))
        users = self.world.users
        return json_response([users[i].payload() for i in message.reactions.get(call.params["emoji"], [])
                              if i in users])

    async def clear_emoji(self, call: Call) -> web.Response:
        channel = self.channel(call)
        message = self.message(call, channel)
        emoji = call.params["emoji"]
        check_emoji(emoji, self.world.custom_emoji_ids())
        self.require(channel, MANAGE_MESSAGES)
        for user_id in list(message.reactions.get(emoji, [])):
            self.world.set_reaction(message, emoji, self.world.users[user_id], False)
        return no_content()

    async def clear_reactions(self, call: Call) -> web.Response:
        channel = self.channel(call)
        message = self.message(call, channel)
        self.require(channel, MANAGE_MESSAGES)
        for emoji, users in list(message.reactions.items()):
            for user_id in list(users):
                self.world.set_reaction(message, emoji, self.world.users[user_id], False)
        return no_content()
