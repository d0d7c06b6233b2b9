"""Acting as guild members and waiting for what the bot does: the test and playground API of the local server.

Mixed into :class:`bot.localdiscord.server.LocalDiscordServer`; every coroutine runs on the server's event loop
(in-process with the bot in tests; the playground calls the same coroutines from its own handlers).
Interaction payloads are built from the commands the bot synced, so a test exercises the real option
definitions (types, required, choices, bounds) exactly as Discord's client would send them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

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
    Interaction,
    Member,
    Message,
    RestCall,
    Role,
    User,
    snowflake,
)

if TYPE_CHECKING:
    from bot.localdiscord.server import LocalDiscordServer, ServerEvent

T = TypeVar("T")

MessagePredicate = Callable[[Message], Any]


class HarnessMixin:
    """Member actions (``send_command``, ``press_button``, ``react``...) and waits (``wait_for_message``...)."""

    # ------------------------------------------------------------------ waiting

    async def _wait_until(self: LocalDiscordServer, check: Callable[[], T | None],
                          timeout: float, what: str) -> T:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = ", ".join(f"{c.method} {c.path}->{c.status}" for c in self.rest_log[-8:])
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last REST calls: [{recent}]")
            await self._waiter.wait(min(remaining, 0.25))

    def bot_messages(self: LocalDiscordServer, *, channel: Channel | int | None = None,
                     include_deleted: bool = False) -> list[Message]:
        """Messages the bot created (channel messages, interaction responses, followups), oldest first."""
        channel_id = channel.id if isinstance(channel, Channel) else channel
        return [m for m in self.messages.values()
                if m.author.id == self.bot_user.id and (include_deleted or not m.deleted)
                and (channel_id is None or m.channel_id == channel_id)]

    async def wait_for_message(self: LocalDiscordServer, predicate: MessagePredicate | None = None,
                               timeout: float = 10.0, *, include_existing: bool = False,  # noqa: ASYNC109
                               channel: Channel | int | None = None) -> Message:
        """The first bot message created or edited from now on (or already there, with ``include_existing``)
        that is not a loading placeholder and matches ``predicate``. Edits count: a message matches again
        each time it changes."""
        seen = {} if include_existing else {m.id: m.edits for m in self.bot_messages(include_deleted=True)}

        def find() -> Message | None:
            for message in self.bot_messages(channel=channel):
                if message.loading or seen.get(message.id, -1) == message.edits:
                    continue
                if predicate is None or predicate(message):
                    return message
            return None

        return await self._wait_until(find, timeout, "a bot message matching the predicate")

    async def wait_for_event(self: LocalDiscordServer, predicate: Callable[[dict[str, Any]], Any] | None = None,
                             timeout: float = 10.0, *, since: int | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """The first subscriber event (as a dict) after index ``since`` (default: from now) matching."""
        start = len(self.events) if since is None else since

        def find() -> dict[str, Any] | None:
            for event in self.events[start:]:
                data = event.to_dict()
                if predicate is None or predicate(data):
                    return data
            return None

        return await self._wait_until(find, timeout, "a matching event")

    def calls(self: LocalDiscordServer, method: str | None = None, path_pattern: str | None = None
              ) -> list[RestCall]:
        """REST calls the bot made, filtered by method and a :func:`compile_path_pattern` pattern."""
        from bot.localdiscord.server import compile_path_pattern

        regex = compile_path_pattern(path_pattern) if path_pattern else None
        return [c for c in self.rest_log if (method is None or c.method == method.upper())
                and (regex is None or regex.fullmatch(c.path))]

    def ack_latency(self: LocalDiscordServer, interaction: Interaction | int) -> float | None:
        """Seconds between dispatching the interaction and the bot's callback (None if never acknowledged)."""
        item = self.interactions[interaction if isinstance(interaction, int) else interaction.id]
        return item.ack_latency

    # ------------------------------------------------------------------ member actions

    def _member_channel(self: LocalDiscordServer, member: Member | User, channel: Channel
                        ) -> tuple[Member | None, User]:
        if isinstance(member, Member):
            if channel.guild_id is not None and member.guild_id != channel.guild_id:
                raise ValueError(f"{member.name} is not a member of the guild of #{channel.name}")
            return member, member.user
        return None, member

    def _interaction_payload(self: LocalDiscordServer, kind: int, member: Member | None, user: User,
                             channel: Channel, data: dict[str, Any], *, locale: str,
                             message: Message | None = None) -> tuple[dict[str, Any], str]:
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        interaction_id = snowflake()
        guild = self._guild_of(channel)
        payload: dict[str, Any] = {
            "id": str(interaction_id), "application_id": str(self.application_id), "type": kind, "data": data,
            "channel_id": str(channel.id), "token": token, "version": 1, "locale": locale,
            "entitlements": [], "attachment_size_limit": self.attachment_size_limit,
            "authorizing_integration_owners": {"0": str(guild.id)} if guild else {"1": str(user.id)},
            "context": 0 if guild else 1,
        }
        channel_payload = channel.payload()
        if guild is not None and member is not None:
            permissions = guild.permissions_of(member)
            bot_permissions = guild.permissions_of(guild.members[self.bot_user.id])
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
            payload["message"] = message.payload(self_id=self.bot_user.id)
        return payload, token

    async def _dispatch_interaction(self: LocalDiscordServer, kind: int, member: Member | User, channel: Channel,
                                    data: dict[str, Any], *, locale: str = "en-US",
                                    message: Message | None = None) -> Interaction:
        guild_member, user = self._member_channel(member, channel)
        payload, token = self._interaction_payload(kind, guild_member, user, channel, data, locale=locale,
                                                   message=message)
        interaction = Interaction(
            id=int(payload["id"]), token=token, type=kind, member=guild_member, user=user, channel=channel,
            payload=payload, created_monotonic=time.monotonic(), created_wall=time.time(), server=self,
            component_message_id=message.id if message is not None else None,
            component_edits_at_start=message.edits if message is not None else 0,
        )
        self.interactions[interaction.id] = interaction
        self._interactions_by_token[token] = interaction
        self._dispatch_all("INTERACTION_CREATE", payload)
        self._emit("interaction_create", {
            "interaction_id": str(interaction.id), "interaction_type": kind, "channel_id": str(channel.id),
            "user_id": str(user.id), "data": data,
        })
        return interaction

    def get_member(self: LocalDiscordServer, key: int | str, guild: Any = None) -> Member:
        """A member of ``guild`` (default: the default guild) by user id or username (for the playground)."""
        guild = guild or self.guild
        for member in guild.members.values():
            if member.id == key or member.name == key or str(member.id) == str(key):
                return member
        raise KeyError(f"no member {key!r} in {guild.name}")

    def find_command(self: LocalDiscordServer, name: str, guild_id: int | None = None) -> dict[str, Any]:
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

    async def send_command(self: LocalDiscordServer, member: Member | User, channel: Channel, name: str,
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

    async def _command_data(self: LocalDiscordServer, name: str, channel: Channel, options: dict[str, Any], *,
                            validate: bool) -> dict[str, Any]:
        """The ``data`` of an APPLICATION_COMMAND interaction, from the synced definition of ``/name``."""
        parts = name.strip().lstrip("/").split()
        command = self.find_command(parts[0], channel.guild_id)
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
        guild = self._guild_of(channel)
        values = self._build_options(leaf_defs, options, resolved, guild, validate=validate)
        for sub in reversed(chain):
            values = [{"name": sub["name"], "type": sub["type"], "options": values}]
        data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1, "options": values}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    def _build_options(self: LocalDiscordServer, defs: list[dict[str, Any]], given: dict[str, Any],
                       resolved: dict[str, dict[str, Any]], guild: Any, *, validate: bool) -> list[dict[str, Any]]:
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

    def _option_value(self: LocalDiscordServer, definition: dict[str, Any], value: Any,
                      resolved: dict[str, dict[str, Any]], guild: Any, *, validate: bool) -> Any:
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
            channel = value if isinstance(value, Channel) else self.channels.get(int(value))
            if channel is None:
                raise ValueError(f"option {name!r}: unknown channel {value!r}")
            allowed = definition.get("channel_types")
            if validate and allowed and channel.type not in allowed:
                raise ValueError(f"option {name!r}: channel type {channel.type} not in {allowed}")
            data = channel.payload()
            if guild is not None:
                data["permissions"] = str(guild.permissions_of(guild.members[self.bot_user.id]))
            resolved.setdefault("channels", {})[str(channel.id)] = data
            result = str(channel.id)
        elif kind in (USER, MENTIONABLE) and not isinstance(value, Role):
            user = value.user if isinstance(value, Member) else value if isinstance(value, User) \
                else self.users.get(int(value))
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
                attachment = self.store_attachment(filename, bytes(blob))
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

    def _resolve_message(self: LocalDiscordServer, message: Message | int) -> Message:
        found = self.messages.get(message if isinstance(message, int) else message.id)
        if found is None or found.deleted:
            raise LookupError(f"no message {message!r}")
        return found

    async def press_button(self: LocalDiscordServer, member: Member | User, message: Message | int,
                           custom_id: str, *, validate: bool = True) -> Interaction:
        """Click the button ``custom_id`` on ``message`` (component interaction, type 3)."""
        target = self._resolve_message(message)
        if validate and custom_id not in target.custom_ids():
            raise LookupError(f"message {target.id} has no component {custom_id!r}; has {target.custom_ids()}")
        channel = self.channels[target.channel_id]
        return await self._dispatch_interaction(3, member, channel, {"custom_id": custom_id, "component_type": 2},
                                                message=target)

    async def select(self: LocalDiscordServer, member: Member | User, message: Message | int, custom_id: str,
                     values: list[str], *, validate: bool = True) -> Interaction:
        """Choose ``values`` in the string select ``custom_id`` on ``message``."""
        target = self._resolve_message(message)
        if validate and custom_id not in target.custom_ids():
            raise LookupError(f"message {target.id} has no component {custom_id!r}; has {target.custom_ids()}")
        channel = self.channels[target.channel_id]
        data = {"custom_id": custom_id, "component_type": 3, "values": list(values)}
        return await self._dispatch_interaction(3, member, channel, data, message=target)

    async def submit_modal(self: LocalDiscordServer, member: Member | User, interaction: Interaction,
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
        message = self.messages.get(interaction.component_message_id or -1)
        return await self._dispatch_interaction(5, member, interaction.channel, data, message=message)

    async def autocomplete(self: LocalDiscordServer, member: Member | User, channel: Channel, name: str,
                           options: dict[str, Any], focused: str) -> Interaction:
        """Type in option ``focused`` of ``/name`` (type 4); the bot's choices land in
        ``interaction.autocomplete_choices`` (await ``interaction.wait_for_ack()`` first)."""
        typed = dict(options)
        partial = typed.pop(focused, "")
        interaction_data = await self._command_data(name, channel, typed, validate=False)
        parts = name.strip().lstrip("/").split()
        defs = self.find_command(parts[0], channel.guild_id).get("options") or []
        leaf = interaction_data["options"]
        for part in parts[1:]:
            defs = next(o for o in defs if o["name"] == part).get("options") or []
            leaf = leaf[0]["options"]
        kind = next((o["type"] for o in defs if o["name"] == focused), STRING)
        leaf.append({"name": focused, "type": kind, "value": str(partial), "focused": True})
        return await self._dispatch_interaction(4, member, channel, interaction_data)

    async def react(self: LocalDiscordServer, member: Member | User, message: Message | int, emoji: str) -> None:
        """Add ``emoji`` as ``member`` (MESSAGE_REACTION_ADD with the member, like Discord)."""
        target = self._resolve_message(message)
        user = member.user if isinstance(member, Member) else member
        self._set_reaction(target, emoji, user, True)

    async def unreact(self: LocalDiscordServer, member: Member | User, message: Message | int, emoji: str) -> None:
        """Remove ``member``'s ``emoji`` reaction (MESSAGE_REACTION_REMOVE)."""
        target = self._resolve_message(message)
        user = member.user if isinstance(member, Member) else member
        self._set_reaction(target, emoji, user, False)

    async def send_message(self: LocalDiscordServer, member: Member, channel: Channel, content: str = "", *,
                           files: list[tuple[str, bytes]] | None = None) -> Message:
        """Post a message as ``member`` (MESSAGE_CREATE; the bot needs the message_content intent to read it)."""
        self._member_channel(member, channel)
        message = Message(id=snowflake(), channel_id=channel.id, guild_id=channel.guild_id, author=member.user,
                          content=content, member=member,
                          attachments=[self.store_attachment(n, b) for n, b in files or []])
        self.messages[message.id] = message
        self._publish_create(message)
        return message

    # ------------------------------------------------------------------ playground helpers

    def snapshot(self: LocalDiscordServer) -> dict[str, Any]:
        """JSON-able state for a page that (re)connects: guild, channels, members, synced commands, messages."""
        return {
            "bot": self.bot_user.payload(),
            "guilds": [g.payload(full=True) for g in self.guilds.values()],
            "commands": [*self.global_commands.values(),
                         *(c for s in self.guild_commands.values() for c in s.values())],
            "messages": [m.to_event() for m in self.messages.values() if not m.deleted],
        }

    def events_since(self: LocalDiscordServer, index: int) -> tuple[list[dict[str, Any]], int]:
        """Events after ``index`` and the next index (for polling clients)."""
        items: list[ServerEvent] = self.events[index:]
        return [e.to_dict() for e in items], len(self.events)


async def run_forever(server: LocalDiscordServer) -> None:  # pragma: no cover - manual use
    """Keep a started server alive (``python -m bot.localdiscord``)."""
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()
