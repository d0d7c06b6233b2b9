"""Turning a REST message body (JSON or multipart with files) into a stored :class:`Message`, or an edit of one.

Shared by every route that takes a message body: channel messages, interaction callbacks, webhook followups
and edits.
"""

from __future__ import annotations

from typing import Any

from bot.localdiscord.errors import DiscordError
from bot.localdiscord.models import (
    EPHEMERAL,
    LOADING,
    Attachment,
    Channel,
    Interaction,
    Message,
    Upload,
    iso_now,
    snowflake,
)
from bot.localdiscord.settings import ServerSettings
from bot.localdiscord.world import World

# Only SUPPRESS_EMBEDS (4) and IS_COMPONENTS_V2 (1 << 15) may change on an edit; ephemeral stays as it was.
EDITABLE_FLAGS = 4 | (1 << 15)


class MessageWriter:
    """Creates and edits messages the bot sends, enforcing Discord's limits on the body."""

    def __init__(self, world: World, settings: ServerSettings) -> None:
        self.world = world
        self.settings = settings

    def create(self, channel: Channel, payload: dict[str, Any] | None, files: list[Upload], *, flags: int = 0,
               interaction: Interaction | None = None, webhook: bool = False, allow_empty: bool = False) -> Message:
        """A new bot message in ``channel`` (stored, not yet announced: the caller publishes it)."""
        payload = payload or {}
        validate_content(payload)
        attachments = self.attachments(payload, files, None)
        world = self.world
        message = Message(
            id=snowflake(), channel_id=channel.id, guild_id=channel.guild_id, author=world.bot_user,
            content=str(payload.get("content") or ""), embeds=list(payload.get("embeds") or []),
            attachments=attachments, components=list(payload.get("components") or []),
            flags=flags | (int(payload.get("flags") or 0) & ~LOADING), tts=bool(payload.get("tts")),
            member=None if webhook else world.bot_member(channel.guild_id),
            webhook_id=world.application_id if webhook else None,
            application_id=world.application_id if interaction is not None else None,
        )
        if not webhook:
            message.flags &= ~EPHEMERAL  # only interaction responses may be ephemeral
        if not (allow_empty or message.content or message.embeds or message.attachments or message.components
                or payload.get("poll") or payload.get("sticker_ids")):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        reference = payload.get("message_reference")
        if isinstance(reference, dict) and reference.get("message_id"):
            message.message_reference = {"message_id": str(reference["message_id"]), "channel_id": str(channel.id),
                                         "type": 0}
            if channel.guild_id is not None:
                message.message_reference["guild_id"] = str(channel.guild_id)
        if interaction is not None:
            message.interaction_id = interaction.id
            message.interaction_metadata = {
                "id": str(interaction.id), "type": interaction.type, "user": interaction.user.payload(),
                "authorizing_integration_owners": {"0": str(channel.guild_id)} if channel.guild_id else {},
            }
            if interaction.type == 2:
                message.interaction_metadata["name"] = interaction.payload["data"].get("name")
            if message.ephemeral:
                message.visible_to = interaction.user.id
        world.messages[message.id] = message
        return message

    def edit(self, message: Message, payload: dict[str, Any] | None, files: list[Upload]) -> None:
        """Apply a PATCH body (channel or webhook route alike) to ``message`` (the caller publishes it)."""
        payload = payload or {}
        validate_content(payload)
        if "content" in payload:
            message.content = str(payload["content"] or "")
        if "embeds" in payload:
            message.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            message.components = list(payload["components"] or [])
        if "attachments" in payload or files:
            message.attachments = self.attachments(payload, files, message.attachments)
        if payload.get("flags") is not None:
            message.flags = (message.flags & ~EDITABLE_FLAGS) | (int(payload["flags"]) & EDITABLE_FLAGS)
        message.flags &= ~LOADING
        message.edited_timestamp = iso_now()
        message.edits += 1

    def attachments(self, payload: dict[str, Any], files: list[Upload], existing: list[Attachment] | None
                    ) -> list[Attachment]:
        """The message's attachments after this request: the kept ones (``attachments`` lists their ids; all
        of them when it is absent) and the uploaded ``files``."""
        described = {str(a.get("id")): a for a in payload.get("attachments") or [] if isinstance(a, dict)}
        kept: list[Attachment] = []
        if existing:
            if "attachments" in payload:
                keep_ids = set(described)
                kept = [a for a in existing if str(a.id) in keep_ids]
            else:
                kept = list(existing)
        total = sum(len(f[2]) for f in files)
        if total > self.settings.attachment_size_limit:
            raise DiscordError(413, 40005, "Request entity too large")
        new = []
        for index, filename, data, content_type in sorted(files, key=lambda f: f[0]):
            meta = described.get(str(index), {})
            new.append(self.world.store_attachment(meta.get("filename") or filename, data, content_type,
                                                   meta.get("description")))
        if len(kept) + len(new) > 10:
            raise DiscordError(400, 50035, "Invalid Form Body", {"attachments": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 10 or fewer in length."}]}})
        return kept + new


def validate_content(payload: dict[str, Any]) -> None:
    content = payload.get("content")
    if content is not None and len(str(content)) > 2000:
        raise DiscordError(400, 50035, "Invalid Form Body", {"content": {"_errors": [
            {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}})
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        raise DiscordError(400, 50035, "Invalid Form Body", {"embeds": {"_errors": [
            {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 10 or fewer in length."}]}})
    for i, embed in enumerate(embeds):
        size = sum(len(str(embed.get(k) or "")) for k in ("title", "description"))
        size += sum(len(str(f.get("name", ""))) + len(str(f.get("value", ""))) for f in embed.get("fields") or [])
        if size > 6000 or len(str(embed.get("description") or "")) > 4096:
            raise DiscordError(400, 50035, "Invalid Form Body", {"embeds": {str(i): {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": "Embed size exceeds maximum size of 6000"}]}}})
