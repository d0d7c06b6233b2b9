"""REST routes for application commands, global and per guild (list, bulk overwrite, create, edit, delete).

Every body is checked against Discord's registration rules (``rules/commands.py``) before anything is stored.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.localdiscord.errors import DiscordError, as_int, json_response, no_content, unknown
from bot.localdiscord.models import snowflake
from bot.localdiscord.router import Call, Router
from bot.localdiscord.rules.commands import check_bulk, check_count, check_single
from bot.localdiscord.world import World

CommandStore = dict[int, dict[str, Any]]


class CommandRoutes:
    def __init__(self, world: World) -> None:
        self.world = world

    def register(self, router: Router) -> None:
        for prefix in ("/applications/{app_id}/commands", "/applications/{app_id}/guilds/{guild_id}/commands"):
            router.add("GET", prefix, self.list_commands)
            router.add("PUT", prefix, self.put_commands)
            router.add("POST", prefix, self.post_command)
            router.add("GET", prefix + "/{command_id}", self.get_command)
            router.add("PATCH", prefix + "/{command_id}", self.patch_command)
            router.add("DELETE", prefix + "/{command_id}", self.delete_command)
        router.add("GET", "/applications/{app_id}/guilds/{guild_id}/commands/permissions", self.list_permissions)

    def _store(self, call: Call) -> tuple[CommandStore, int | None]:
        if as_int(call.params["app_id"]) != self.world.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        guild_id = call.params.get("guild_id")
        if guild_id is None:
            return self.world.global_commands, None
        gid = as_int(guild_id)
        if gid not in self.world.guilds:
            raise DiscordError(403, 50001, "Missing Access")
        return self.world.guild_commands.setdefault(gid, {}), gid

    def _normalise(self, data: dict[str, Any], guild_id: int | None, existing: dict[str, Any] | None
                   ) -> dict[str, Any]:
        """The stored form of a (checked) command body: Discord's defaults filled in, a stable id, a new version."""
        command = dict(data)
        command.setdefault("type", 1)
        command.setdefault("description", "")
        command.setdefault("options", [])
        command.setdefault("default_member_permissions", None)
        command.setdefault("nsfw", False)
        command["id"] = existing["id"] if existing else str(snowflake())
        command["application_id"] = str(self.world.application_id)
        command["version"] = str(snowflake())
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        else:
            command.setdefault("contexts", None)
            command.setdefault("integration_types", [0])
        return command

    async def list_commands(self, call: Call) -> web.Response:
        store, _ = self._store(call)
        return json_response(list(store.values()))

    async def put_commands(self, call: Call) -> web.Response:
        store, guild_id = self._store(call)
        check_bulk(call.json)
        by_key = {(c["name"], c["type"]): c for c in store.values()}
        new: CommandStore = {}
        for data in call.json:
            command = self._normalise(data, guild_id, by_key.get((data.get("name"), data.get("type", 1))))
            new[int(command["id"])] = command
        store.clear()
        store.update(new)
        return json_response(list(store.values()))

    async def post_command(self, call: Call) -> web.Response:
        store, guild_id = self._store(call)
        data = call.json or {}
        check_single(data)
        existing = next((c for c in store.values()
                         if c["name"] == data.get("name") and c["type"] == data.get("type", 1)), None)
        if existing is None:
            check_count([*store.values(), data])
        command = self._normalise(data, guild_id, existing)
        store[int(command["id"])] = command
        return json_response(command, status=200 if existing else 201)

    def _find(self, call: Call) -> tuple[CommandStore, dict[str, Any], int | None]:
        store, guild_id = self._store(call)
        command = store.get(as_int(call.params["command_id"]))
        if command is None:
            raise unknown("application command", 10063)
        return store, command, guild_id

    async def get_command(self, call: Call) -> web.Response:
        return json_response(self._find(call)[1])

    async def patch_command(self, call: Call) -> web.Response:
        store, command, guild_id = self._find(call)
        merged = {**command, **(call.json or {})}
        check_single(merged)
        updated = self._normalise(merged, guild_id, command)
        store[int(updated["id"])] = updated
        return json_response(updated)

    async def delete_command(self, call: Call) -> web.Response:
        store, command, _ = self._find(call)
        del store[int(command["id"])]
        return no_content()

    async def list_permissions(self, call: Call) -> web.Response:
        return json_response([])
