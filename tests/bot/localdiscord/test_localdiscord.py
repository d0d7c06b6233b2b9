"""The real discord.py client against the local Discord, reached only through configure_endpoints + a token."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands
from discord.ext import commands

from bot.discord.endpoints import configure_endpoints, reset_endpoints
from bot.localdiscord import EPHEMERAL, LocalDiscordServer

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token-123"


def tiny_png() -> bytes:
    """A valid 2x1 RGB PNG, built here so the test needs no image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00" + b"\xff\x00\x00" + b"\x00\xff\x00"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PNG = tiny_png()


@dataclass
class Record:
    """What the test cog saw, for assertions."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    resumed: int = 0


class RerollView(discord.ui.View):
    """Persistent view: the handler must work for any message carrying the custom_id."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Reroll", custom_id="reroll", style=discord.ButtonStyle.primary)
    async def reroll(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_message(f"rerolled by {interaction.user.id}", ephemeral=True)


class RenameModal(discord.ui.Modal, title="Rename"):
    new_name = discord.ui.TextInput(label="New name", custom_id="new_name")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"renamed to {self.new_name.value}")


class PanelView(discord.ui.View):
    """A non-persistent view: discord.py binds it to the message id the callback response returns."""

    @discord.ui.button(label="Upscale", custom_id="upscale")
    async def upscale(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()  # type 6 for a component
        await interaction.edit_original_response(content="upscaled")  # PATCH .../messages/@original
        await interaction.followup.send("upscaled copy", ephemeral=True)

    @discord.ui.button(label="Rename", custom_id="rename")
    async def rename(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_modal(RenameModal())

    @discord.ui.button(label="Hide", custom_id="hide")
    async def hide(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content="hidden", view=None)  # type 7


STYLES = ["cinematic", "comic", "watercolor"]


class LocalCog(commands.Cog):
    contest = app_commands.Group(name="contest", description="image contests")

    def __init__(self, bot: LocalBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="draw a picture")
    async def imagine(self, interaction: discord.Interaction, prompt: str, steps: app_commands.Range[int, 1, 50] = 20,
                      guidance: float = 7.5, channel: discord.TextChannel | None = None) -> None:
        await interaction.response.defer(thinking=True)
        self.bot.record.calls.append({"prompt": prompt, "steps": steps, "guidance": guidance, "channel": channel,
                                      "nsfw": interaction.channel.is_nsfw(),
                                      "admin": interaction.permissions.manage_guild})
        embed = discord.Embed(title=prompt, description=f"steps={steps}")
        embed.set_image(url="attachment://result.png")
        await interaction.followup.send(embed=embed, file=discord.File(io.BytesIO(PNG), "result.png"),
                                        view=RerollView())

    @contest.command(name="start", description="start a contest")
    async def contest_start(self, interaction: discord.Interaction, theme: str) -> None:
        admin = interaction.permissions.manage_guild
        await interaction.response.send_message(f"contest {theme} admin={admin}", ephemeral=not admin)

    @app_commands.command(name="slow", description="answers late")
    async def slow(self, interaction: discord.Interaction, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await interaction.response.send_message("too late?")
        except discord.HTTPException as exc:
            self.bot.record.errors.append(exc)

    @app_commands.command(name="later", description="defers, then follows up after a while")
    async def later(self, interaction: discord.Interaction, delay: float) -> None:
        await interaction.response.defer()
        await asyncio.sleep(delay)
        try:
            await interaction.followup.send("done")
        except discord.HTTPException as exc:
            self.bot.record.errors.append(exc)

    @app_commands.command(name="panel", description="a message with buttons")
    async def panel(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("panel", view=PanelView(timeout=60))

    @app_commands.command(name="style", description="pick a style")
    async def style(self, interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"style {name}")

    @style.autocomplete("name")
    async def style_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=s, value=s) for s in STYLES if s.startswith(current)]

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.user_id == self.bot.user.id:
            return
        channel = self.bot.get_channel(payload.channel_id)
        await channel.send(f"reaction {payload.emoji} by {payload.user_id} on {payload.message_id}")

    @commands.Cog.listener()
    async def on_resumed(self) -> None:
        self.bot.record.resumed += 1


class LocalBot(commands.Bot):
    def __init__(self, guild_id: int) -> None:
        # max_messages=None: no message cache, so reactions always hit uncached messages (the restart case).
        super().__init__(command_prefix="!", intents=discord.Intents.default(), max_messages=None,
                         guild_ready_timeout=0.05)
        self.guild_id = guild_id
        self.record = Record()

    async def setup_hook(self) -> None:
        await self.add_cog(LocalCog(self))
        self.add_view(RerollView())
        guild = discord.Object(self.guild_id)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)


@dataclass
class World:
    server: LocalDiscordServer
    bot: LocalBot


@pytest.fixture
async def world() -> AsyncIterator[World]:
    server = LocalDiscordServer(token=TOKEN)
    await server.start()
    configure_endpoints(server.api_base_url, server.gateway_url)
    bot = LocalBot(server.guild.id)
    task: asyncio.Task[None] | None = None
    try:
        await bot.login(TOKEN)
        task = asyncio.create_task(bot.connect(reconnect=True))
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        yield World(server, bot)
        assert server.unknown_routes == [], server.unknown_routes
    finally:
        await bot.close()
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        await server.close()
        reset_endpoints()


async def test_login_ready_guild_and_command_sync(world: World) -> None:
    server, bot = world.server, world.bot
    guild = bot.get_guild(server.guild.id)
    assert guild is not None and guild.name == "Imagine Test Guild"
    assert guild.get_channel(server.nsfw_channel.id).is_nsfw()
    assert not guild.get_channel(server.general.id).is_nsfw()
    assert guild.me is not None and bot.user.id == server.bot_user.id
    assert bot.application_id == server.application_id
    admin_role = next(r for r in guild.roles if r.name == "Admin")
    assert admin_role.permissions.administrator and admin_role.permissions.manage_guild
    assert server.identify_count == 1
    await server.wait_until(lambda: bot.latency < 1, 5, "a heartbeat ACK")  # inf until the first ACK

    synced = {c["name"]: c for c in server.guild_commands[server.guild.id].values()}
    assert {"imagine", "contest", "slow", "later", "panel", "style"} <= set(synced)
    imagine = {o["name"]: o for o in synced["imagine"]["options"]}
    assert imagine["prompt"]["type"] == 3 and imagine["prompt"]["required"]
    assert (imagine["steps"]["type"], imagine["steps"]["min_value"], imagine["steps"]["max_value"]) == (4, 1, 50)
    assert imagine["guidance"]["type"] == 10 and imagine["channel"]["type"] == 7
    fetched = await bot.tree.fetch_commands(guild=discord.Object(server.guild.id))
    assert {c.name for c in fetched} == set(synced)
    assert all(c.id for c in fetched)


async def test_slash_command_defer_followup_with_png_embed_and_button(world: World) -> None:
    server, bot = world.server, world.bot
    bob = server.members["bob"]
    interaction = await server.send_command(bob, server.nsfw_channel, "imagine",
                                            {"prompt": "a red fox", "steps": 12, "guidance": 5.5,
                                             "channel": server.art})
    message = await interaction.wait_for_response(timeout=5)
    assert interaction.response_type == 5
    assert server.ack_latency(interaction) is not None and 0 <= server.ack_latency(interaction) < 3
    assert message.id == interaction.original_message_id  # the first followup replaced "thinking..."
    assert not message.loading and not message.ephemeral
    assert message.embeds[0]["title"] == "a red fox"
    assert message.embeds[0]["image"]["url"] == "attachment://result.png"
    attachment = message.attachment("result.png")
    assert attachment.data == PNG and attachment.content_type == "image/png"
    assert "reroll" in message.custom_ids()
    async with aiohttp.ClientSession() as http, http.get(attachment.url) as response:
        assert response.status == 200 and await response.read() == PNG

    call = bot.record.calls[-1]
    assert (call["prompt"], call["steps"], call["guidance"], call["nsfw"], call["admin"]) == (
        "a red fox", 12, 5.5, True, False)
    assert call["channel"].id == server.art.id

    press = await server.press_button(server.admin, message, "reroll")
    reply = await press.wait_for_response(timeout=5)
    assert press.response_type == 4 and reply.flags & EPHEMERAL and reply.visible_to == server.admin.id
    assert reply.content == f"rerolled by {server.admin.id}"
    assert server.ack_latency(press) < 3


async def test_subcommand_admin_permission_and_events(world: World) -> None:
    server = world.server
    seen: list[dict[str, Any]] = []
    unsubscribe = server.subscribe(seen.append)
    admin_reply = await (await server.send_command(server.admin, server.general, "contest start",
                                                   {"theme": "cats"})).wait_for_response(timeout=5)
    assert admin_reply.content == "contest cats admin=True" and not admin_reply.ephemeral
    member_reply = await (await server.send_command(server.members["bob"], server.general, "contest start",
                                                    {"theme": "dogs"})).wait_for_response(timeout=5)
    assert member_reply.content == "contest dogs admin=False" and member_reply.ephemeral
    unsubscribe()
    kinds = [e["type"] for e in seen]
    assert kinds.count("interaction_create") == 2 and kinds.count("message_create") == 2
    response = next(e for e in seen if e["type"] == "interaction_response")
    assert response["response_type"] == 4 and response["message"]["content"] == "contest cats admin=True"
    with pytest.raises(ValueError, match="missing required"):
        await server.send_command(server.admin, server.general, "imagine", {})
    with pytest.raises(ValueError, match="not within"):
        await server.send_command(server.admin, server.general, "imagine", {"prompt": "x", "steps": 99})


async def test_component_update_edit_original_modal_and_autocomplete(world: World) -> None:
    server = world.server
    bob = server.members["bob"]
    panel = await (await server.send_command(bob, server.general, "panel")).wait_for_response(timeout=5)
    assert set(panel.custom_ids()) == {"upscale", "rename", "hide"}

    upscale = await server.press_button(bob, panel, "upscale")
    assert await upscale.wait_for_ack() == 6
    copy = await upscale.wait_for_response(timeout=5, predicate=lambda m: m.id != panel.id)
    assert copy.content == "upscaled copy" and copy.ephemeral
    assert panel.content == "upscaled" and panel.edited_timestamp is not None
    assert server.calls("PATCH", "/webhooks/*/*/messages/@original")

    rename = await server.press_button(bob, panel, "rename")
    modal = await rename.wait_for_modal()
    assert modal["title"] == "Rename"
    submitted = await server.submit_modal(bob, rename, {"new_name": "Bob's fox"})
    assert (await submitted.wait_for_response(timeout=5)).content == "renamed to Bob's fox"

    hide = await server.press_button(bob, panel, "hide")
    assert await hide.wait_for_ack() == 7
    assert panel.content == "hidden" and panel.components == []

    typed = await server.autocomplete(bob, server.general, "style", {"name": "c"}, focused="name")
    assert await typed.wait_for_ack() == 8
    assert [c["value"] for c in typed.autocomplete_choices] == ["cinematic", "comic"]
    assert server.gateway_log[0]["zlib_stream"]  # discord.py asked for zlib-stream and decoded it


async def test_reaction_on_uncached_message_reaches_raw_listener(world: World) -> None:
    server = world.server
    bob = server.members["bob"]
    posted = await server.send_message(bob, server.general, "look at this")
    await server.react(bob, posted, "🔄")
    reply = await server.wait_for_message(lambda m: m.content.startswith("reaction"), timeout=5)
    assert reply.content == f"reaction 🔄 by {bob.id} on {posted.id}"
    assert reply.channel_id == server.general.id
    assert posted.reactions == {"🔄": [bob.id]}
    await server.unreact(bob, posted, "🔄")
    assert posted.reactions == {}


async def test_rate_limited_followup_is_retried(world: World) -> None:
    server = world.server
    rule = server.fail_route("POST", "/webhooks/{app}/{token}", 429, retry_after=0.2)
    interaction = await server.send_command(server.members["carol"], server.art, "imagine", {"prompt": "owl"})
    message = await interaction.wait_for_response(timeout=5)
    assert message.attachment("result.png").data == PNG
    assert rule.hits == 1
    assert [c.status for c in server.calls("POST", "/webhooks/*/*")] == [429, 200]


async def test_server_error_is_retried(world: World) -> None:
    server = world.server
    rule = server.fail_route("POST", "/channels/*/messages", 500)
    bob = server.members["bob"]
    posted = await server.send_message(bob, server.general, "hi")
    await server.react(bob, posted, "⭐")
    reply = await server.wait_for_message(lambda m: "⭐" in m.content, timeout=5)
    assert reply.content.startswith("reaction")
    assert rule.hits == 1
    assert [c.status for c in server.calls("POST", "/channels/*/messages")] == [500, 200]


async def test_gateway_drop_resumes_and_replays_missed_events(world: World) -> None:
    server, bot = world.server, world.bot
    assert server.drop_gateway() == 1
    bob = server.members["bob"]
    posted = await server.send_message(bob, server.general, "while you were away")
    await server.react(bob, posted, "👍")  # dispatched while disconnected: must be replayed after RESUME
    await server.wait_until(lambda: server.resume_count, 10, "a RESUME")
    reply = await server.wait_for_message(lambda m: "👍" in m.content, timeout=5)
    assert str(posted.id) in reply.content
    assert server.identify_count == 1 and bot.record.resumed == 1
    later = await server.send_command(bob, server.general, "imagine", {"prompt": "after resume"})
    assert (await later.wait_for_response(timeout=5)).embeds[0]["title"] == "after resume"


async def test_late_ack_and_expired_token(world: World) -> None:
    server, bot = world.server, world.bot
    server.ack_deadline_seconds = 0.2
    late = await server.send_command(server.admin, server.general, "slow", {"delay": 0.4})
    await server.wait_until(lambda: late.late_callback, 5, "the late callback")
    await server.wait_until(lambda: bot.record.errors, 5, "the bot's error")
    assert not late.acknowledged and server.ack_latency(late) is None
    assert isinstance(bot.record.errors[0], discord.NotFound) and bot.record.errors[0].code == 10062

    server.ack_deadline_seconds = 3.0
    server.token_ttl_seconds = 0.3
    expired = await server.send_command(server.admin, server.general, "later", {"delay": 0.5})
    await server.wait_until(lambda: len(bot.record.errors) == 2, 5, "the expired-token error")
    assert expired.response_type == 5
    error = bot.record.errors[1]
    assert isinstance(error, discord.HTTPException) and error.status == 401 and error.code == 50027


async def test_unknown_route_and_bad_token_are_reported(world: World) -> None:
    server, bot = world.server, world.bot
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/nonexistent/{thing}", thing="x"))
    assert server.unknown_routes == [("GET", "/nonexistent/x")]
    server.unknown_routes.clear()  # the fixture asserts none was hit otherwise

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.api_base_url}/users/@me", headers={"Authorization": "Bot wrong"}) as r:
            assert r.status == 401
        async with http.get(f"{server.api_base_url}/users/@me", headers={"Authorization": f"Bot {TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["id"] == str(server.bot_user.id)


async def test_rest_surface_parses_in_discord_py(world: World) -> None:
    """The REST calls a bot typically makes return payloads discord.py accepts."""
    server, bot = world.server, world.bot
    channel = bot.get_channel(server.general.id)
    sent = await channel.send("first", file=discord.File(io.BytesIO(PNG), "a.png"))
    assert sent.attachments[0].filename == "a.png" and sent.attachments[0].width == 2
    assert await sent.attachments[0].read() == PNG  # served from the local attachment URL
    edited = await sent.edit(content="second", attachments=[sent.attachments[0],
                                                            discord.File(io.BytesIO(b"x"), "b.txt")])
    assert edited.content == "second" and [a.filename for a in edited.attachments] == ["a.png", "b.txt"]
    await sent.add_reaction("✅")
    fetched = await channel.fetch_message(sent.id)
    assert fetched.reactions[0].me and str(fetched.reactions[0].emoji) == "✅"
    await sent.remove_reaction("✅", bot.user)
    reply = await sent.reply("a reply")
    assert reply.reference is not None and reply.reference.message_id == sent.id
    history = [m.id async for m in channel.history(limit=10)]
    assert history[:2] == [reply.id, sent.id]
    await reply.delete()
    assert server.messages[reply.id].deleted
    assert (await bot.fetch_channel(server.nsfw_channel.id)).is_nsfw()
    assert (await bot.fetch_guild(server.guild.id)).name == "Imagine Test Guild"
    alice = await bot.get_guild(server.guild.id).fetch_member(server.admin.id)
    assert alice.guild_permissions.administrator
    user = await bot.fetch_user(server.members["bob"].id)
    dm = await user.create_dm()
    await dm.send("hello in private")
    assert server.bot_messages(channel=dm.id)[0].content == "hello in private"
    assert server.drop_gateway(abort=False, code=4000) == 1  # a resumable close frame this time
    await server.wait_until(lambda: server.resume_count and server.connected, 10, "a RESUME")
    events = [e.type for e in server.events]
    assert {"message_create", "message_update", "message_delete", "reaction_add", "reaction_remove"} <= set(events)
