"""REST routes that answer interactions: the callback (within 3 s, once) and the token's webhook (15 min).

The webhook routes are how followups and edits of the original response travel; on Discord they are not
subject to the bot's channel permissions, only to the token's lifetime.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from bot.localdiscord.errors import DiscordError, as_int, json_response, jsonable, no_content, unknown
from bot.localdiscord.messages import MessageWriter
from bot.localdiscord.models import EPHEMERAL, LOADING, Interaction, Message
from bot.localdiscord.router import Call, Router
from bot.localdiscord.rules.callbacks import (
    already_acknowledged,
    check_autocomplete,
    check_callback_type,
    check_modal,
)
from bot.localdiscord.rules.messages import INTERACTION_MESSAGE_FLAGS
from bot.localdiscord.settings import ServerSettings
from bot.localdiscord.world import World


class InteractionRoutes:
    def __init__(self, world: World, writer: MessageWriter, settings: ServerSettings) -> None:
        self.world = world
        self.writer = writer
        self.settings = settings

    def register(self, router: Router) -> None:
        router.add("POST", "/interactions/{interaction_id}/{token}/callback", self.callback, auth="webhook")
        router.add("POST", "/webhooks/{app_id}/{token}", self.followup, auth="webhook")
        for mid in ("@original", "{message_id}"):
            path = "/webhooks/{app_id}/{token}/messages/" + mid
            router.add("GET", path, self.get_message, auth="webhook")
            router.add("PATCH", path, self.edit_message, auth="webhook")
            router.add("DELETE", path, self.delete_message, auth="webhook")

    # ------------------------------------------------------------------ the callback

    async def callback(self, call: Call) -> web.Response:
        world = self.world
        interaction = world.interactions.get(as_int(call.params["interaction_id"]))
        if interaction is None or interaction.token != call.params["token"]:
            raise unknown("interaction", 10062)
        if interaction.acknowledged:
            raise already_acknowledged()
        now = time.monotonic()
        if now - interaction.created_monotonic > self.settings.ack_deadline_seconds:
            interaction.late_callback = True
            world.hub.waiter.notify()
            raise unknown("interaction", 10062)
        body = call.json or {}
        kind = body.get("type")
        data = body.get("data") or {}
        check_callback_type(kind, interaction.type, has_message=interaction.component_message_id is not None)
        channel = interaction.channel
        message: Message | None = None
        if kind == 4:
            message = self.writer.create(channel, data, call.files, allowed_flags=INTERACTION_MESSAGE_FLAGS,
                                         where=("data",), interaction=interaction, webhook=True)
            register_original(interaction, message)
            world.publish_create(message)
        elif kind == 5:
            self.writer.check({"flags": data.get("flags")}, [], allowed_flags=INTERACTION_MESSAGE_FLAGS,
                              where=("data",))
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            message = self.writer.create(channel, {}, [], allowed_flags=0, flags=flags, interaction=interaction,
                                         webhook=True, allow_empty=True)
            register_original(interaction, message)
            world.publish_create(message)
        elif kind in (6, 7):
            message = world.messages[interaction.component_message_id]  # type: ignore[index]
            if kind == 7:
                self.writer.edit(message, data, call.files, where=("data",))
                world.publish_update(message)
            register_original(interaction, message)
        elif kind == 8:
            check_autocomplete(data)
            interaction.autocomplete_choices = list(data.get("choices") or [])
        elif kind == 9:
            check_modal(data)
            interaction.modal = data
        interaction.acked_monotonic = now
        interaction.response_type = kind
        interaction.response_data = data
        world.hub.emit("interaction_response", {
            "interaction_id": str(interaction.id), "response_type": kind, "data": jsonable(data),
            "ack_latency": interaction.ack_latency,
            "message": message.to_event() if message is not None else None,
        })
        if call.query.get("with_response") not in ("1", "true", "True"):
            return no_content()
        return json_response(self._callback_response(interaction, kind, message))

    def _callback_response(self, interaction: Interaction, kind: int, message: Message | None) -> dict[str, Any]:
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            resource["message"] = message.payload(self_id=self.world.bot_user.id)
        return {
            "interaction": {
                "id": str(interaction.id), "type": interaction.type,
                "response_message_id": str(message.id) if message is not None else None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message is not None and message.ephemeral),
            },
            "resource": resource,
        }

    # ------------------------------------------------------------------ the webhook

    def _interaction(self, call: Call) -> Interaction:
        """The interaction behind ``/webhooks/{app}/{token}``; enforces the token's 15-minute lifetime."""
        interaction = self.world.interactions_by_token.get(call.params["token"])
        if interaction is None or as_int(call.params["app_id"]) != self.world.application_id:
            raise unknown("Webhook", 10015)
        if time.monotonic() - interaction.created_monotonic > self.settings.token_ttl_seconds:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        if not interaction.acknowledged:
            raise unknown("Webhook", 10015)
        return interaction

    def _target(self, call: Call, interaction: Interaction) -> Message:
        mid = call.request.path.rsplit("/", 1)[-1]
        if mid == "@original":
            message = interaction.original
            if message is None:
                raise unknown("Message", 10008)
            return message
        message = self.world.messages.get(as_int(mid))
        if message is None or message.deleted or message.id not in interaction.message_ids:
            raise unknown("Message", 10008)
        return message

    def respond(self, message: Message) -> web.Response:
        return json_response(message.payload(self_id=self.world.bot_user.id))

    async def followup(self, call: Call) -> web.Response:
        interaction = self._interaction(call)
        payload = call.json or {}
        original = interaction.original
        self.writer.check(payload, call.files, allowed_flags=INTERACTION_MESSAGE_FLAGS)
        if original is not None and original.loading and not original.deleted:
            # Discord: the first followup after a deferred (type 5) response replaces the "thinking" message,
            # keeping the defer's ephemerality.
            self.writer.edit(original, {"attachments": [], **payload}, call.files, checked=True)
            self.world.publish_update(original)
            message = original
        else:
            message = self.writer.create(interaction.channel, payload, call.files, interaction=interaction,
                                         allowed_flags=INTERACTION_MESSAGE_FLAGS, webhook=True, checked=True)
            interaction.message_ids.append(message.id)
            self.world.publish_create(message)
        if call.query.get("wait") in ("0", "false", "False"):
            return no_content()
        return self.respond(message)

    async def get_message(self, call: Call) -> web.Response:
        return self.respond(self._target(call, self._interaction(call)))

    async def edit_message(self, call: Call) -> web.Response:
        message = self._target(call, self._interaction(call))
        self.writer.edit(message, call.json or {}, call.files)
        self.world.publish_update(message)
        return self.respond(message)

    async def delete_message(self, call: Call) -> web.Response:
        self.world.delete_message(self._target(call, self._interaction(call)))
        return no_content()


def register_original(interaction: Interaction, message: Message) -> None:
    interaction.original_message_id = message.id
    if message.id not in interaction.message_ids:
        interaction.message_ids.insert(0, message.id)
