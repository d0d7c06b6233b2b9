"""The gateway refuses IDENTIFYs Discord refuses, routes guild events to the owning shard and respects intents.

A raw websocket client stands in for the bot so the test controls exactly what IDENTIFY says. "Not received"
is asserted against a later marker event the session does receive (frames of one session arrive in order).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bot.localdiscord import Guild, LocalDiscordServer
from bot.localdiscord.rules.gateway import (
    DIRECT_MESSAGES,
    GUILD_MEMBERS,
    GUILD_MESSAGE_REACTIONS,
    GUILD_MESSAGES,
    GUILD_PRESENCES,
    GUILDS,
    MESSAGE_CONTENT,
)

pytestmark = pytest.mark.timeout(30)

TOKEN = "gateway-rules-token"
DEFAULT_INTENTS = GUILDS | GUILD_MESSAGES | GUILD_MESSAGE_REACTIONS | DIRECT_MESSAGES


class Client:
    """One websocket session: IDENTIFY as told, then collect every dispatch."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.dispatches: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame["op"] == 0:
                    self.dispatches.append(frame)
                    self.changed.set()
        self.closed.set()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f["d"] for f in self.dispatches if f["t"] == name]

    async def wait_for(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first dispatch (whole frame) matching ``check``."""
        async with asyncio.timeout(10):
            while True:
                found = next((f for f in self.dispatches if check(f)), None)
                if found is not None:
                    return found
                self.changed.clear()
                await self.changed.wait()

    def before(self, marker: dict[str, Any]) -> list[str]:
        """Event names received before ``marker``."""
        return [f["t"] for f in self.dispatches[:self.dispatches.index(marker)]]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


@pytest.fixture
async def server() -> AsyncIterator[LocalDiscordServer]:
    async with LocalDiscordServer(token=TOKEN) as running:
        yield running


@pytest.fixture
async def connect(server: LocalDiscordServer) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []
    async with aiohttp.ClientSession() as http:

        async def identify(**fields: Any) -> Client:
            ws = await http.ws_connect(server.gateway_url)
            hello = await ws.receive_json()
            assert hello["op"] == 10
            data = {"token": TOKEN, "intents": DEFAULT_INTENTS, "properties": {"os": "linux"},
                    "large_threshold": 250, **fields}
            await ws.send_json({"op": 2, "d": {k: v for k, v in data.items() if v is not None}})
            client = Client(ws)
            clients.append(client)
            return client

        yield identify
        for client in clients:
            await client.close()


async def ready(client: Client) -> dict[str, Any]:
    return (await client.wait_for(lambda f: f["t"] == "READY"))["d"]


@pytest.mark.parametrize(("case", "fields", "code"), [
    ("message_content_not_enabled", {"intents": DEFAULT_INTENTS | MESSAGE_CONTENT}, 4014),
    ("guild_members_not_enabled", {"intents": DEFAULT_INTENTS | GUILD_MEMBERS}, 4014),
    ("guild_presences_not_enabled", {"intents": DEFAULT_INTENTS | GUILD_PRESENCES}, 4014),
    ("unknown_intent_bit", {"intents": DEFAULT_INTENTS | 1 << 30}, 4013),
    ("intents_missing", {"intents": None}, 4013),
    ("large_threshold_49", {"large_threshold": 49}, 4002),
    ("large_threshold_251", {"large_threshold": 251}, 4002),
    ("shard_id_not_below_count", {"shard": [2, 2]}, 4010),
    ("zero_shards", {"shard": [0, 0]}, 4010),
])
async def test_identify_refused(server: LocalDiscordServer, connect: Callable[..., Any], case: str,
                                fields: dict[str, Any], code: int) -> None:
    client = await connect(**fields)
    async with asyncio.timeout(10):
        await client.closed.wait()
    assert client.close_code == code
    assert client.dispatches == [] and server.identify_count == 0
    assert (server.refusals[-1].method, server.refusals[-1].status) == ("GATEWAY", code)


async def test_enabled_privileged_intents_are_accepted(connect: Callable[..., Any]) -> None:
    async with LocalDiscordServer(token=TOKEN, privileged_intents=MESSAGE_CONTENT | GUILD_MEMBERS) as server:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(server.gateway_url)
            await ws.receive_json()
            await ws.send_json({"op": 2, "d": {"token": TOKEN, "intents": DEFAULT_INTENTS | MESSAGE_CONTENT
                                               | GUILD_MEMBERS, "properties": {}, "shard": [0, 1]}})
            assert (await ws.receive_json())["t"] == "READY"
            await ws.close()
        assert server.refusals == [] and server.identify_count == 1


def guilds_on_both_shards(server: LocalDiscordServer) -> dict[int, Guild]:
    """A guild owned by shard 0 and one owned by shard 1 of two (ids are time-based, so add until both exist)."""
    owned: dict[int, Guild] = {(server.guild.id >> 22) % 2: server.guild}
    while len(owned) < 2:
        guild = server.add_guild(f"Guild {len(server.guilds)}")
        server.add_channel(guild, "general")
        owned.setdefault((guild.id >> 22) % 2, guild)
    return owned


async def test_guild_events_reach_only_the_owning_shard(server: LocalDiscordServer,
                                                        connect: Callable[..., Any]) -> None:
    owned = guilds_on_both_shards(server)
    shards = [await connect(shard=[0, 2]), await connect(shard=[1, 2])]
    for number, client in enumerate(shards):
        assert {g["id"] for g in (await ready(client))["guilds"]} == {
            str(g.id) for g in server.guilds.values() if (g.id >> 22) % 2 == number}
    sent = {}
    for number, guild in owned.items():
        member = server.add_member(guild, f"member{number}")
        sent[number] = await server.send_message(member, guild.channels[0], f"hello shard {number}")
    for number, client in enumerate(shards):
        mine = await client.wait_for(lambda f, n=number: f["t"] == "MESSAGE_CREATE"
                                     and f["d"]["id"] == str(sent[n].id))
        other = str(sent[1 - number].id)
        assert all(f["d"].get("id") != other for f in client.dispatches[:client.dispatches.index(mine) + 1])
    # The other shard's message was dispatched before each marker below: had it been sent, it would be there.
    for number, client in enumerate(shards):
        marker = await server.send_message(server.get_member(f"member{number}", owned[number]),
                                           owned[number].channels[0], "marker")
        frame = await client.wait_for(lambda f, m=marker: f["t"] == "MESSAGE_CREATE" and f["d"]["id"] == str(m.id))
        assert [f["d"]["id"] for f in client.dispatches[:client.dispatches.index(frame)]
                if f["t"] == "MESSAGE_CREATE"] == [str(sent[number].id)]


async def test_direct_messages_reach_shard_zero(server: LocalDiscordServer, connect: Callable[..., Any]) -> None:
    shards = [await connect(shard=[0, 2]), await connect(shard=[1, 2])]
    for client in shards:
        await ready(client)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {TOKEN}"}) as http:
        async with http.post(f"{server.api_base_url}/users/@me/channels",
                             json={"recipient_id": str(server.members["bob"].id)}) as response:
            dm = await response.json()
        async with http.post(f"{server.api_base_url}/channels/{dm['id']}/messages", json={"content": "hi"}):
            pass
    await shards[0].wait_for(lambda f: f["t"] == "MESSAGE_CREATE" and "guild_id" not in f["d"])
    marker_guild = guilds_on_both_shards(server)[1]
    member = server.add_member(marker_guild, "marker")
    marker = await server.send_message(member, marker_guild.channels[0], "marker")
    frame = await shards[1].wait_for(lambda f: f["t"] == "MESSAGE_CREATE" and f["d"]["id"] == str(marker.id))
    assert "MESSAGE_CREATE" not in shards[1].before(frame)


async def test_events_need_their_intent(server: LocalDiscordServer, connect: Callable[..., Any]) -> None:
    no_reactions = await connect(intents=GUILDS | GUILD_MESSAGES)
    no_messages = await connect(intents=GUILDS | GUILD_MESSAGE_REACTIONS)
    await ready(no_reactions)
    await ready(no_messages)
    bob = server.members["bob"]
    message = await server.send_message(bob, server.general, "react to me")
    await server.react(bob, message, "⭐")
    marker = await server.send_message(bob, server.general, "marker")
    frame = await no_reactions.wait_for(lambda f: f["t"] == "MESSAGE_CREATE" and f["d"]["id"] == str(marker.id))
    assert "MESSAGE_REACTION_ADD" not in no_reactions.before(frame)
    await no_messages.wait_for(lambda f: f["t"] == "MESSAGE_REACTION_ADD")
    await server.unreact(bob, message, "⭐")
    frame = await no_messages.wait_for(lambda f: f["t"] == "MESSAGE_REACTION_REMOVE")
    assert "MESSAGE_CREATE" not in no_messages.before(frame)
    assert "GUILD_MEMBER_ADD" not in [f["t"] for f in no_messages.dispatches]  # GUILD_MEMBERS not asked


async def test_without_message_content_members_messages_arrive_empty(connect: Callable[..., Any]) -> None:
    async with LocalDiscordServer(token=TOKEN, privileged_intents=MESSAGE_CONTENT | GUILD_PRESENCES) as server, \
            aiohttp.ClientSession() as http:
        clients = []
        for intents in (DEFAULT_INTENTS, DEFAULT_INTENTS | MESSAGE_CONTENT | GUILD_PRESENCES):
            ws = await http.ws_connect(server.gateway_url)
            await ws.receive_json()
            await ws.send_json({"op": 2, "d": {"token": TOKEN, "intents": intents, "properties": {}}})
            clients.append(Client(ws))
        plain, privileged = clients
        guild_create = [(await c.wait_for(lambda f: f["t"] == "GUILD_CREATE"))["d"] for c in clients]
        assert [m["user"]["id"] for m in guild_create[0]["members"]] == [str(server.bot_user.id)]
        assert len(guild_create[1]["members"]) == len(server.guild.members)
        bob = server.members["bob"]
        posted = await server.send_message(bob, server.general, "secret", files=[("a.png", b"png")])
        mention = await server.send_message(bob, server.general, f"<@{server.bot_user.id}> look")
        seen = {}
        for name, client in (("plain", plain), ("privileged", privileged)):
            for message in (posted, mention):
                frame = await client.wait_for(lambda f, m=message: f["t"] == "MESSAGE_CREATE"
                                              and f["d"]["id"] == str(m.id))
                seen[name, message.id] = (frame["d"]["content"], len(frame["d"]["attachments"]))
        assert seen["plain", posted.id] == ("", 0)
        assert seen["privileged", posted.id] == ("secret", 1)
        assert seen["plain", mention.id][0].endswith("look")  # a mention of the bot keeps its content
        for client in clients:
            await client.close()
