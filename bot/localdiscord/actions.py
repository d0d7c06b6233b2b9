"""Acting as guild members: slash commands, buttons, selects, modals, autocomplete, reactions, messages.

:class:`MemberActions` is held by the server (``server.actions``; the server exposes the same coroutines).
Every coroutine runs on the server's event loop (in-process with the bot in tests; the playground calls them
from its own handlers). Interaction payloads are built from the commands the bot synced, so a test exercises
the real option definitions (types, required, choices, bounds) exactly as Discord's client would send them.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from bot.localdiscord.events import EventHub
from bot.localdiscord.models import (
    ATTACHMENT,
    BOOLEAN,
    CHANNEL,
    INTEGER,
    MENTIONABLE,
    NUMBER,
    ROLE,
    STRING,
    SUB_COMMAND,
    SUB_COMMAND_GROUP,
    USER,
    Attachment,
    Channel,
    Guild,
    Interaction,
    Member,
    Message,
    Role,
    User,
    snowflake,
)
from bot.localdiscord.settings import ServerSettings
from bot.localdiscord.world import World


class MemberActions:
    """What a guild member can do to the bot, as Discord's client would send it."""

    def __init__(self, world: World, hub: EventHub, settings: ServerSettings) -> None:
        self.world = world
        self.hub = hub
        self.settings = settings

    def _member_channel(self, member: Member | User, channel: Channel
                        ) -> tuple[Member | None, User]:
        if isinstance(member, Member):
            if channel.guild_id is not None and member.guild_id != channel.guild_id:
                raise ValueError(f"{member.name} is not a member of the guild of #{channel.name}")
            return member, member.user
        return None, member

    def _interaction_payload(self, kind: int, member: Member | None, user: User,
                             channel: Channel, data: dict[str, Any], *, locale: str,
                             message: Message | None = None) -> tuple[dict[str, Any], str]:
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        interaction_id = snowflake()
        guild = self.world.guild_of(channel)
        payload: dict[str, Any] = {
            "id": str(interaction_id), "application_id": str(self.world.application_id), "type": kind, "data": data,
            "channel_id": str(channel.id), "token": token, "version": 1, "locale": locale,
            "entitlements": [], "attachment_size_limit": self.settings.attachment_size_limit,
            "authorizing_integration_owners": {"0": str(guild.id)} if guild else {"1": str(user.id)},
            "context": 0 if guild else 1,
        }
        channel_payload = channel.payload()
        if guild is not None and member is not None:
            # Discord sends both as computed in the channel, overwrites included.
            permissions = guild.permissions_in(member, channel)
            bot_permissions = guild.permissions_in(guild.members[self.world.bot_user.id], channel)
            channel_payload["permissions"] = str(permissions)
            payload.update({
                "guild_id": str(guild.id), "guild_locale": "en-US",
                "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
                "member": member.payload(permissions=permissions), "app_permissions": str(bot_permissions),
            })
        else:
            payload["user"] = user.payload()
            payload["app_permissions"] = "0"
        payload["channel"] = channel_payload
        if message is not None:
            payload["message"] = message.payload(self_id=self.world.bot_user.id)
        return payload, token

    async def _dispatch_interaction(self, kind: int, member: Member | User, channel: Channel,
                                    data: dict[str, Any], *, locale: str = "en-US",
                                    message: Message | None = None) -> Interaction:
        guild_member, user = self._member_channel(member, channel)
        payload, token = self._interaction_payload(kind, guild_member, user, channel, data, locale=locale,
                                                   message=message)
        interaction = Interaction(
            id=int(payload["id"]), token=token, type=kind, member=guild_member, user=user, channel=channel,
            payload=payload, created_monotonic=time.monotonic(), created_wall=time.time(),
            store=self.world.messages, waiter=self.hub.waiter,
            component_message_id=message.id if message is not None else None,
            component_edits_at_start=message.edits if message is not None else 0,
        )
        self.world.interactions[interaction.id] = interaction
        self.world.interactions_by_token[token] = interaction
        self.hub.dispatch("INTERACTION_CREATE", payload, channel.guild_id)
        self.hub.emit("interaction_create", {
            "interaction_id": str(interaction.id), "interaction_type": kind, "channel_id": str(channel.id),
            "user_id": str(user.id), "data": data,
        })
        return interaction

    async def send_command(self, member: Member | User, channel: Channel, name: str,
                           options: dict[str, Any] | None = None, *, locale: str = "en-US",
                           validate: bool = True) -> Interaction:
        """Run ``/name`` (``"contest start"`` for subcommands) as ``member`` in ``channel``.

        Option values by type: STRING str, INTEGER int, NUMBER float, BOOLEAN bool, CHANNEL a
        :class:`Channel` or id, USER a :class:`Member`/:class:`User` or id, ROLE a :class:`Role` or id,
        ATTACHMENT ``(filename, bytes)`` or an :class:`Attachment`. With ``validate`` (the default) unknown or
        missing required options, choices and min/max bounds raise ``ValueError`` as Discord's client would
        refuse to send them.
        """
        data = await self._command_data(name, channel, options or {}, validate=validate)
        return await self._dispatch_interaction(2, member, channel, data, locale=locale)

    async def _command_data(self, name: str, channel: Channel, options: dict[str, Any], *,
                            validate: bool) -> dict[str, Any]:
        """The ``data`` of an APPLICATION_COMMAND interaction, from the synced definition of ``/name``."""
        parts = name.strip().lstrip("/").split()
        command = self.world.find_command(parts[0], channel.guild_id)
        resolved: dict[str, dict[str, Any]] = {}
        leaf_defs = command.get("options") or []
        chain: list[dict[str, Any]] = []
        for part in parts[1:]:
            sub = next((o for o in leaf_defs if o["name"] == part and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)),
                       None)
            if sub is None:
                names = [o["name"] for o in leaf_defs if o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)]
                raise LookupError(f"/{parts[0]} has no subcommand {part!r}; have {names}")
            chain.append(sub)
            leaf_defs = sub.get("options") or []
        if validate and any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in leaf_defs):
            raise LookupError(f"/{name} needs a subcommand: {[o['name'] for o in leaf_defs]}")
        guild = self.world.guild_of(channel)
        values = self._build_options(leaf_defs, options, resolved, guild, validate=validate)
        for sub in reversed(chain):
            values = [{"name": sub["name"], "type": sub["type"], "options": values}]
        data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1, "options": values}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    def _build_options(self, defs: list[dict[str, Any]], given: dict[str, Any], resolved: dict[str, dict[str, Any]],
                       guild: Guild | None, *, validate: bool) -> list[dict[str, Any]]:
        by_name = {d["name"]: d for d in defs}
        out: list[dict[str, Any]] = []
        for key, value in given.items():
            definition = by_name.get(key)
            if definition is None:
                if validate:
                    raise ValueError(f"unknown option {key!r}; the command has {list(by_name)}")
                definition = {"name": key, "type": STRING}
            kind = definition["type"]
            out.append({"name": key, "type": kind,
                        "value": self._option_value(definition, value, resolved, guild, validate=validate)})
        if validate:
            missing = [d["name"] for d in defs if d.get("required") and d["name"] not in given]
            if missing:
                raise ValueError(f"missing required option(s) {missing}")
        return out

    def _option_value(self, definition: dict[str, Any], value: Any,
                      resolved: dict[str, dict[str, Any]], guild: Guild | None, *, validate: bool) -> Any:
        kind, name = definition["type"], definition["name"]
        if kind == STRING:
            result: Any = str(value)
            if validate:
                low, high = definition.get("min_length"), definition.get("max_length")
                if (low is not None and len(result) < low) or (high is not None and len(result) > high):
                    raise ValueError(f"option {name!r}: length must be within [{low}, {high}]")
        elif kind == INTEGER:
            if isinstance(value, bool) or (validate and isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"option {name!r} needs an integer, got {value!r}")
            result = int(value)
        elif kind == NUMBER:
            result = float(value)
        elif kind == BOOLEAN:
            result = value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
        elif kind == CHANNEL:
            channel = value if isinstance(value, Channel) else self.world.channels.get(int(value))
            if channel is None:
                raise ValueError(f"option {name!r}: unknown channel {value!r}")
            allowed = definition.get("channel_types")
            if validate and allowed and channel.type not in allowed:
                raise ValueError(f"option {name!r}: channel type {channel.type} not in {allowed}")
            data = channel.payload()
            if guild is not None:
                data["permissions"] = str(guild.permissions_of(guild.members[self.world.bot_user.id]))
            resolved.setdefault("channels", {})[str(channel.id)] = data
            result = str(channel.id)
        elif kind in (USER, MENTIONABLE) and not isinstance(value, Role):
            user = value.user if isinstance(value, Member) else value if isinstance(value, User) \
                else self.world.users.get(int(value))
            if user is None:
                raise ValueError(f"option {name!r}: unknown user {value!r}")
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            if guild is not None and user.id in guild.members:
                gm = guild.members[user.id]
                resolved.setdefault("members", {})[str(user.id)] = gm.payload(
                    permissions=guild.permissions_of(gm), with_user=False)
            result = str(user.id)
        elif kind in (ROLE, MENTIONABLE):
            role = value if isinstance(value, Role) else guild.role(int(value)) if guild is not None else None
            if role is None:
                raise ValueError(f"option {name!r}: unknown role {value!r}")
            resolved.setdefault("roles", {})[str(role.id)] = role.payload()
            result = str(role.id)
        elif kind == ATTACHMENT:
            if isinstance(value, Attachment):
                attachment = value
            else:
                filename, blob = value
                attachment = self.world.store_attachment(filename, bytes(blob))
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            result = str(attachment.id)
        else:
            raise ValueError(f"option {name!r}: unsupported option type {kind}")
        if validate:
            choices = definition.get("choices")
            if choices and result not in [c["value"] for c in choices]:
                raise ValueError(f"option {name!r}: {result!r} is not one of {[c['value'] for c in choices]}")
            low, high = definition.get("min_value"), definition.get("max_value")
            out_of_range = (low is not None and result < low) or (high is not None and result > high)
            if kind in (INTEGER, NUMBER) and out_of_range:
                raise ValueError(f"option {name!r}: {result} not within [{low}, {high}]")
        return result

    async def press_button(self, member: Member | User, message: Message | int,
                           custom_id: str, *, validate: bool = True) -> Interaction:
        """Click the button ``custom_id`` on ``message`` (component interaction, type 3)."""
        target = self.world.resolve_message(message)
        if validate and custom_id not in target.custom_ids():
            raise LookupError(f"message {target.id} has no component {custom_id!r}; has {target.custom_ids()}")
        channel = self.world.channels[target.channel_id]
        return await self._dispatch_interaction(3, member, channel, {"custom_id": custom_id, "component_type": 2},
                                                message=target)

    async def select(self, member: Member | User, message: Message | int, custom_id: str,
                     values: list[str], *, validate: bool = True) -> Interaction:
        """Choose ``values`` in the string select ``custom_id`` on ``message``."""
        target = self.world.resolve_message(message)
        if validate and custom_id not in target.custom_ids():
            raise LookupError(f"message {target.id} has no component {custom_id!r}; has {target.custom_ids()}")
        channel = self.world.channels[target.channel_id]
        data = {"custom_id": custom_id, "component_type": 3, "values": list(values)}
        return await self._dispatch_interaction(3, member, channel, data, message=target)

    async def submit_modal(self, member: Member | User, interaction: Interaction,
                           values: dict[str, Any]) -> Interaction:
        """Submit the modal the bot showed for ``interaction`` (type 5). ``values`` maps a text input's
        custom_id to its text (a select's custom_id to a list of values); the submission mirrors the modal's
        own layout (action rows or labels), as Discord sends it."""
        modal = interaction.modal
        if modal is None:
            raise LookupError(f"interaction {interaction.id} showed no modal")

        def answer(component: dict[str, Any]) -> dict[str, Any]:
            kind = component.get("type")
            if kind == 1:
                rows = [answer(c) for c in component["components"]]
                return {"type": 1, "id": component.get("id"), "components": rows}
            if kind == 18:
                return {"type": 18, "id": component.get("id"), "component": answer(component["component"])}
            custom_id = component.get("custom_id")
            value = values.get(custom_id, component.get("value") or "")
            if kind == 4:
                return {"type": 4, "id": component.get("id"), "custom_id": custom_id, "value": str(value)}
            return {"type": kind, "id": component.get("id"), "custom_id": custom_id, "values": list(value or [])}

        data = {"custom_id": modal.get("custom_id"), "components": [answer(c) for c in modal.get("components", [])]}
        message = self.world.messages.get(interaction.component_message_id or -1)
        return await self._dispatch_interaction(5, member, interaction.channel, data, message=message)

    async def autocomplete(self, member: Member | User, channel: Channel, name: str,
                           options: dict[str, Any], focused: str) -> Interaction:
        """Type in option ``focused`` of ``/name`` (type 4); the bot's choices land in
        ``interaction.autocomplete_choices`` (await ``interaction.wait_for_ack()`` first)."""
        typed = dict(options)
        partial = typed.pop(focused, "")
        interaction_data = await self._command_data(name, channel, typed, validate=False)
        parts = name.strip().lstrip("/").split()
        defs = self.world.find_command(parts[0], channel.guild_id).get("options") or []
        leaf = interaction_data["options"]
        for part in parts[1:]:
            defs = next(o for o in defs if o["name"] == part).get("options") or []
            leaf = leaf[0]["options"]
        kind = next((o["type"] for o in defs if o["name"] == focused), STRING)
        leaf.append({"name": focused, "type": kind, "value": str(partial), "focused": True})
        return await self._dispatch_interaction(4, member, channel, interaction_data)

    async def react(self, member: Member | User, message: Message | int, emoji: str) -> None:
        """Add ``emoji`` as ``member`` (MESSAGE_REACTION_ADD with the member, like Discord)."""
        target = self.world.resolve_message(message)
        user = member.user if isinstance(member, Member) else member
        self.world.set_reaction(target, emoji, user, True)

    async def unreact(self, member: Member | User, message: Message | int, emoji: str) -> None:
        """Remove ``member``'s ``emoji`` reaction (MESSAGE_REACTION_REMOVE)."""
        target = self.world.resolve_message(message)
        user = member.user if isinstance(member, Member) else member
        self.world.set_reaction(target, emoji, user, False)

    async def send_message(self, member: Member, channel: Channel, content: str = "", *,
                           files: list[tuple[str, bytes]] | None = None) -> Message:
        """Post a message as ``member`` (MESSAGE_CREATE; the bot needs the message_content intent to read it)."""
        self._member_channel(member, channel)
        message = Message(id=snowflake(), channel_id=channel.id, guild_id=channel.guild_id, author=member.user,
                          content=content, member=member,
                          attachments=[self.world.store_attachment(n, b) for n, b in files or []])
        self.world.publish_create(message)
        return message
