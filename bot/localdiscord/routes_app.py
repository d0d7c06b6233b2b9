"""REST routes about the application itself: the gateway URL, the bot user, users, DMs, the application."""

from __future__ import annotations

from aiohttp import web

from bot.localdiscord.errors import as_int, json_response, unknown
from bot.localdiscord.models import Channel, snowflake
from bot.localdiscord.router import Call, Router
from bot.localdiscord.settings import ServerSettings
from bot.localdiscord.world import World


class AppRoutes:
    def __init__(self, world: World, settings: ServerSettings) -> None:
        self.world = world
        self.settings = settings

    def register(self, router: Router) -> None:
        router.add("GET", "/gateway", self.get_gateway, auth="none")
        router.add("GET", "/gateway/bot", self.get_gateway_bot)
        router.add("GET", "/users/@me", self.get_me)
        router.add("GET", "/users/@me/guilds", self.get_my_guilds)
        router.add("POST", "/users/@me/channels", self.create_dm)
        router.add("GET", "/users/{user_id}", self.get_user)
        router.add("GET", "/oauth2/applications/@me", self.get_application)
        router.add("GET", "/applications/@me", self.get_application)

    async def get_gateway(self, call: Call) -> web.Response:
        return json_response({"url": self.settings.gateway_url})

    async def get_gateway_bot(self, call: Call) -> web.Response:
        return json_response({
            "url": self.settings.gateway_url, "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
        })

    async def get_me(self, call: Call) -> web.Response:
        return json_response(self.world.bot_user.payload() | {"verified": True, "mfa_enabled": False})

    async def get_my_guilds(self, call: Call) -> web.Response:
        bot_id = self.world.bot_user.id
        return json_response([
            {"id": str(g.id), "name": g.name, "icon": None, "owner": False, "features": [],
             "permissions": str(g.permissions_of(g.members[bot_id]))}
            for g in self.world.guilds.values()
        ])

    async def get_user(self, call: Call) -> web.Response:
        user = self.world.users.get(as_int(call.params["user_id"]))
        if user is None:
            raise unknown("User", 10013)
        return json_response(user.payload())

    async def create_dm(self, call: Call) -> web.Response:
        recipient = self.world.users.get(as_int((call.json or {}).get("recipient_id")))
        if recipient is None:
            raise unknown("User", 10013)
        for channel in self.world.channels.values():
            if channel.type == 1 and channel.recipients and channel.recipients[0].id == recipient.id:
                return json_response(channel.payload())
        channel = Channel(snowflake(), recipient.username, None, type=1, recipients=[recipient])
        self.world.channels[channel.id] = channel
        return json_response(channel.payload())

    async def get_application(self, call: Call) -> web.Response:
        world = self.world
        owner = world.users[world.guild.owner_id] if hasattr(world, "guild") else world.bot_user
        return json_response({
            "id": str(world.application_id), "name": world.bot_user.username, "icon": None,
            "description": "local imagine-bot", "summary": "", "rpc_origins": [], "bot_public": True,
            "bot_require_code_grant": False, "owner": owner.payload(),
            "team": None, "verify_key": "0" * 64, "flags": 0, "bot": world.bot_user.payload(),
            "interactions_endpoint_url": None, "approximate_guild_count": len(world.guilds),
            "redirect_uris": [], "tags": [],
        })
