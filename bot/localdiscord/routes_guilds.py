"""REST routes for guilds: the guild, its channels, roles and members."""

from __future__ import annotations

from aiohttp import web

from bot.localdiscord.errors import as_int, json_response, unknown
from bot.localdiscord.models import Guild
from bot.localdiscord.router import Call, Router
from bot.localdiscord.world import World


class GuildRoutes:
    def __init__(self, world: World) -> None:
        self.world = world

    def register(self, router: Router) -> None:
        router.add("GET", "/guilds/{guild_id}", self.get_guild)
        router.add("GET", "/guilds/{guild_id}/channels", self.get_channels)
        router.add("GET", "/guilds/{guild_id}/roles", self.get_roles)
        router.add("GET", "/guilds/{guild_id}/members", self.list_members)
        router.add("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)

    def guild(self, call: Call) -> Guild:
        guild = self.world.guilds.get(as_int(call.params["guild_id"]))
        if guild is None:
            raise unknown("Guild", 10004)
        return guild

    async def get_guild(self, call: Call) -> web.Response:
        return json_response(self.guild(call).payload())

    async def get_channels(self, call: Call) -> web.Response:
        return json_response([c.payload() for c in self.guild(call).channels])

    async def get_roles(self, call: Call) -> web.Response:
        return json_response([r.payload() for r in self.guild(call).roles])

    async def list_members(self, call: Call) -> web.Response:
        guild = self.guild(call)
        limit = int(call.query.get("limit", 1))
        after = int(call.query.get("after", 0))
        members = sorted((m for m in guild.members.values() if m.id > after), key=lambda m: m.id)[:limit]
        return json_response([m.payload() for m in members])

    async def get_member(self, call: Call) -> web.Response:
        member = self.guild(call).members.get(as_int(call.params["user_id"]))
        if member is None:
            raise unknown("Member", 10007)
        return json_response(member.payload())
