"""Turning a REST message body (JSON or multipart with files) into a stored :class:`Message`, or an edit of one.

Shared by every route that takes a message body (channel messages, interaction callbacks, webhook followups,
edits), so each of them refuses the same things (``rules/messages.py``, ``rules/uploads.py``); a route says
which flags it allows and where in the body the message sits (``data`` for a callback).
"""

from __future__ import annotations

from typing import Any

from bot.localdiscord.errors import DiscordError, as_int
from bot.localdiscord.models import (
    LOADING,
    Attachment,
    Channel,
    Interaction,
    Message,
    Upload,
    iso_now,
    snowflake,
)
from bot.localdiscord.rules.form import FormErrors, Path
from bot.localdiscord.rules.messages import EDITABLE_FLAGS, BodyRules, check_body
from bot.localdiscord.rules.uploads import check_uploads
from bot.localdiscord.settings import ServerSettings
from bot.localdiscord.world import World


class MessageWriter:
    """Creates and edits messages the bot sends, refusing what Discord refuses in the body."""

    def __init__(self, world: World, settings: ServerSettings) -> None:
        self.world = world
        self.settings = settings

    # ------------------------------------------------------------------ checking

    def check(self, payload: dict[str, Any], files: list[Upload], *, allowed_flags: int, where: Path = (),
              existing: Message | None = None, channel: Channel | None = None) -> None:
        """Refuse the body (400 50035 with every problem; 413 40005 for uploads) before anything changes.

        ``existing``: the message an edit applies to (its kept attachments count, its flags may only gain
        editable ones). ``channel``: where a new channel message goes (its ``message_reference`` must exist).
        """
        kept = self._kept(payload, existing.attachments) if existing is not None else []
        check_uploads(files, kept=len(kept), file_limit=self.settings.attachment_size_limit,
                      request_limit=self.settings.request_size_limit)
        names = {a.filename for a in kept} | set(self._upload_names(payload, files))
        errors = FormErrors(where)
        rules = BodyRules(names, allowed_flags, existing.flags if existing is not None else None)
        check_body(errors, payload, rules)
        if channel is not None:
            self._check_reference(errors, payload, channel)
        errors.raise_if_any()

    def _check_reference(self, errors: FormErrors, payload: dict[str, Any], channel: Channel) -> None:
        """A reply must point at an existing message of the same channel, unless ``fail_if_not_exists`` is
        false (then it is sent without the reference)."""
        reference = payload.get("message_reference")
        if not isinstance(reference, dict):
            return
        errors.required(("message_reference", "message_id"), reference.get("message_id") is not None)
        target = self.world.messages.get(as_int(reference.get("message_id")))
        missing = target is None or target.deleted or target.channel_id != channel.id
        if missing and reference.get("message_id") is not None and reference.get("fail_if_not_exists", True):
            errors.add(("message_reference",), "REPLIES_UNKNOWN_MESSAGE", "Unknown message")

    @staticmethod
    def _upload_names(payload: dict[str, Any], files: list[Upload]) -> list[str]:
        described = {str(a.get("id")): a for a in payload.get("attachments") or [] if isinstance(a, dict)}
        return [described.get(str(index), {}).get("filename") or filename for index, filename, _, _ in files]

    @staticmethod
    def _kept(payload: dict[str, Any], existing: list[Attachment]) -> list[Attachment]:
        """Attachments an edit keeps: those whose ids ``attachments`` lists, or all when it is absent."""
        if "attachments" not in payload:
            return list(existing)
        keep_ids = {str(a.get("id")) for a in payload.get("attachments") or [] if isinstance(a, dict)}
        return [a for a in existing if str(a.id) in keep_ids]

    # ------------------------------------------------------------------ creating and editing

    def create(self, channel: Channel, payload: dict[str, Any] | None, files: list[Upload], *, allowed_flags: int,
               where: Path = (), flags: int = 0, interaction: Interaction | None = None, webhook: bool = False,
               allow_empty: bool = False, checked: bool = False) -> Message:
        """A new bot message in ``channel`` (stored, not yet announced: the caller publishes it).
        ``checked``: the caller already ran :meth:`check` (it checks permissions in between)."""
        payload = payload or {}
        if not checked:
            self.check(payload, files, allowed_flags=allowed_flags, where=where,
                       channel=None if webhook else channel)
        world = self.world
        message = Message(
            id=snowflake(), channel_id=channel.id, guild_id=channel.guild_id, author=world.bot_user,
            content=str(payload.get("content") or ""), embeds=list(payload.get("embeds") or []),
            attachments=self._store_uploads(payload, files), components=list(payload.get("components") or []),
            flags=flags | (int(payload.get("flags") or 0) & ~LOADING), tts=bool(payload.get("tts")),
            member=None if webhook else world.bot_member(channel.guild_id),
            webhook_id=world.application_id if webhook else None,
            application_id=world.application_id if interaction is not None else None,
        )
        if not (allow_empty or message.content or message.embeds or message.attachments or message.components
                or payload.get("poll") or payload.get("sticker_ids")):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        reference = payload.get("message_reference")
        target = world.messages.get(as_int(reference.get("message_id"))) if isinstance(reference, dict) else None
        if target is not None and not target.deleted and target.channel_id == channel.id:
            message.message_reference = {"message_id": str(target.id), "channel_id": str(channel.id), "type": 0}
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

    def edit(self, message: Message, payload: dict[str, Any] | None, files: list[Upload], *, where: Path = (),
             checked: bool = False) -> None:
        """Apply a PATCH body (channel or webhook route alike) to ``message`` (the caller publishes it).
        ``checked``: the caller already ran :meth:`check` with the rules of its route."""
        payload = payload or {}
        if not checked:
            self.check(payload, files, allowed_flags=EDITABLE_FLAGS, where=where, existing=message)
        if "content" in payload:
            message.content = str(payload["content"] or "")
        if "embeds" in payload:
            message.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            message.components = list(payload["components"] or [])
        if "attachments" in payload or files:
            message.attachments = self._kept(payload, message.attachments) + self._store_uploads(payload, files)
        if payload.get("flags") is not None:
            # Only SUPPRESS_EMBEDS and IS_COMPONENTS_V2 change; ephemeral stays as the message was created.
            message.flags = (message.flags & ~EDITABLE_FLAGS) | (int(payload["flags"]) & EDITABLE_FLAGS)
        message.flags &= ~LOADING
        message.edited_timestamp = iso_now()
        message.edits += 1

    def _store_uploads(self, payload: dict[str, Any], files: list[Upload]) -> list[Attachment]:
        described = {str(a.get("id")): a for a in payload.get("attachments") or [] if isinstance(a, dict)}
        stored = []
        for index, filename, data, content_type in sorted(files, key=lambda f: f[0]):
            meta = described.get(str(index), {})
            stored.append(self.world.store_attachment(meta.get("filename") or filename, data, content_type,
                                                      meta.get("description")))
        return stored
