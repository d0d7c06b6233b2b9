"""The local Discord refuses over HTTP what real Discord refuses, with Discord's status, code and field path.

Each case sends one offending payload to a running server as the bot would (raw HTTP, the bot's token) and
checks the status, the JSON code, the field the ``errors`` tree names, and that the refusal was recorded.
Next to each table, valid payloads of the same kind must still pass.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from bot.localdiscord import Interaction, LocalDiscordServer, Message
from bot.localdiscord.permissions import (
    ADD_REACTIONS,
    ATTACH_FILES,
    EMBED_LINKS,
    INVITE_PERMISSIONS,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = "rules-token"
MiB = 1024 * 1024
Body = dict[str, Any]


@dataclass
class Reply:
    status: int
    body: Any

    def errors_at(self, path: str) -> list[dict[str, str]]:
        """The ``_errors`` under ``path`` (``"embeds.0.title"``; ``""`` for the root) of a 50035 body."""
        node = self.body["errors"]
        for key in path.split(".") if path else []:
            assert key in node, f"no errors under {key!r} of {path!r}: {self.body}"
            node = node[key]
        assert node.get("_errors"), f"no _errors at {path!r}: {self.body}"
        return node["_errors"]


class Bot:
    """Plays the bot over raw HTTP: exactly what reaches the server, nothing discord.py would fix first."""

    def __init__(self, server: LocalDiscordServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    async def call(self, method: str, path: str, body: Any = None, files: list[tuple[str, bytes]] | None = None
                   ) -> Reply:
        headers = {"Authorization": f"Bot {TOKEN}"}
        data: Any = None
        if files is not None:
            data = aiohttp.FormData()
            data.add_field("payload_json", json.dumps(body or {}), content_type="application/json")
            for index, (name, blob) in enumerate(files):
                data.add_field(f"files[{index}]", blob, filename=name, content_type="application/octet-stream")
            body = None
        async with self.http.request(method, self.server.api_base_url + path, json=body, data=data,
                                     headers=headers) as response:
            payload = await response.json() if response.content_type == "application/json" else None
            return Reply(response.status, payload)

    async def post(self, channel_id: int, body: Body, files: list[tuple[str, bytes]] | None = None) -> Reply:
        return await self.call("POST", f"/channels/{channel_id}/messages", body, files)

    async def callback(self, interaction: Interaction, body: Body, files: list[tuple[str, bytes]] | None = None
                       ) -> Reply:
        return await self.call("POST", f"/interactions/{interaction.id}/{interaction.token}/callback", body, files)

    def webhook(self, interaction: Interaction) -> str:
        return f"/webhooks/{self.server.application_id}/{interaction.token}"

    async def sync(self, commands: list[Body], *, guild: bool = True) -> Reply:
        scope = f"/guilds/{self.server.guild.id}" if guild else ""
        return await self.call("PUT", f"/applications/{self.server.application_id}{scope}/commands", commands)


def assert_refused(server: LocalDiscordServer, reply: Reply, status: int, code: int, path: str | None = None
                   ) -> None:
    """``status`` and ``code`` in Discord's body; for 50035 the field ``path``; recorded in server.refusals."""
    assert reply.status == status, reply.body
    assert reply.body["code"] == code, reply.body
    if path is not None:
        reply.errors_at(path)
    refusal = server.refusals[-1]
    assert (refusal.status, refusal.code) == (status, code)


@pytest.fixture
async def server() -> AsyncIterator[LocalDiscordServer]:
    async with LocalDiscordServer(token=TOKEN) as running:
        yield running


@pytest.fixture
async def bot(server: LocalDiscordServer) -> AsyncIterator[Bot]:
    async with aiohttp.ClientSession() as http:
        yield Bot(server, http)


# ---------------------------------------------------------------------------------------------- commands


def command(**changes: Any) -> Body:
    base: Body = {"name": "imagine", "type": 1, "description": "draw a picture", "options": [
        {"type": 3, "name": "prompt", "description": "what to draw", "required": True}]}
    return {**base, **changes}


def option(**changes: Any) -> Body:
    return {"type": 3, "name": "style", "description": "a style", **changes}


def choices(count: int, kind: type = str) -> list[Body]:
    return [{"name": f"c{i}", "value": kind(i) if kind is not str else f"v{i}"} for i in range(count)]


def sub(name: str, options: list[Body] | None = None, kind: int = 1) -> Body:
    return {"type": kind, "name": name, "description": f"{name} it", "options": options or []}


COMMAND_CASES: list[tuple[str, list[Body], str]] = [
    ("name_empty", [command(name="")], "0.name"),
    ("name_33_chars", [command(name="a" * 33)], "0.name"),
    ("name_upper_case", [command(name="Imagine")], "0.name"),
    ("name_with_space", [command(name="my cmd")], "0.name"),
    ("name_with_punctuation", [command(name="draw!")], "0.name"),
    ("description_empty", [command(description="")], "0.description"),
    ("description_101", [command(description="d" * 101)], "0.description"),
    ("options_26", [command(options=[option(name=f"o{i}") for i in range(26)])], "0.options"),
    ("required_after_optional", [command(options=[option(), option(name="prompt", required=True)])],
     "0.options.1.required"),
    ("choices_26", [command(options=[option(choices=choices(26))])], "0.options.0.choices"),
    ("option_names_repeat", [command(options=[option(), option()])], "0.options.1.name"),
    ("min_value_above_max", [command(options=[option(type=4, min_value=10, max_value=1)])],
     "0.options.0.min_value"),
    ("min_length_above_max", [command(options=[option(min_length=10, max_length=5)])], "0.options.0.min_length"),
    ("max_length_6001", [command(options=[option(max_length=6001)])], "0.options.0.max_length"),
    ("min_value_on_string", [command(options=[option(min_value=1)])], "0.options.0.min_value"),
    ("option_name_upper_case", [command(options=[option(name="Style")])], "0.options.0.name"),
    ("option_description_101", [command(options=[option(description="d" * 101)])], "0.options.0.description"),
    ("option_description_missing", [command(options=[{"type": 3, "name": "style"}])], "0.options.0.description"),
    ("choice_name_101", [command(options=[option(choices=[{"name": "n" * 101, "value": "v"}])])],
     "0.options.0.choices.0.name"),
    ("choice_value_not_int", [command(options=[option(type=4, choices=[{"name": "one", "value": "1"}])])],
     "0.options.0.choices.0.value"),
    ("choice_string_value_101", [command(options=[option(choices=[{"name": "n", "value": "v" * 101}])])],
     "0.options.0.choices.0.value"),
    ("autocomplete_with_choices", [command(options=[option(autocomplete=True, choices=choices(2))])],
     "0.options.0.autocomplete"),
    ("option_type_unknown", [command(options=[option(type=12)])], "0.options.0.type"),
    ("subcommand_inside_subcommand", [command(options=[sub("start", [sub("now")])])], "0.options.0.options.0.type"),
    ("group_holds_a_string", [command(options=[sub("admin", [option()], kind=2)])], "0.options.0.options.0.type"),
    ("subcommands_mixed_with_options", [command(options=[sub("start"), option()])], "0.options"),
    ("context_menu_with_description", [{"name": "Save Image", "type": 3, "description": "saves"}], "0.description"),
    ("total_over_8000", [command(options=[option(name=f"o{i}", description="d" * 100,
                                                 choices=[{"name": "n" * 100, "value": f"{j}" * 100}
                                                          for j in range(1, 10)]) for i in range(5)])], "0"),
    ("command_names_repeat", [command(), command()], "1.name"),
]


@pytest.mark.parametrize(("case", "commands", "path"), COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES])
async def test_command_registration_refused(server: LocalDiscordServer, bot: Bot, case: str,
                                            commands: list[Body], path: str) -> None:
    reply = await bot.sync(commands)
    assert_refused(server, reply, 400, 50035, path)
    assert server.guild_commands.get(server.guild.id, {}) == {}  # nothing of a refused bulk PUT is kept


async def test_post_and_patch_check_the_same_rules(server: LocalDiscordServer, bot: Bot) -> None:
    base = f"/applications/{server.application_id}/commands"
    assert_refused(server, await bot.call("POST", base, command(name="Draw")), 400, 50035, "name")
    created = await bot.call("POST", base, command())
    assert created.status == 201
    reply = await bot.call("PATCH", f"{base}/{created.body['id']}", {"description": "d" * 101})
    assert_refused(server, reply, 400, 50035, "description")
    assert server.global_commands[int(created.body["id"])]["description"] == "draw a picture"


async def test_at_most_100_chat_input_commands(server: LocalDiscordServer, bot: Bot) -> None:
    hundred = [command(name=f"c{i}") for i in range(100)]
    assert (await bot.sync(hundred, guild=False)).status == 200
    assert_refused(server, await bot.sync([*hundred, command(name="c100")], guild=False), 400, 30032)
    base = f"/applications/{server.application_id}/commands"
    assert_refused(server, await bot.call("POST", base, command(name="c100")), 400, 30032)
    assert (await bot.call("POST", base, {"name": "Save Image", "type": 3})).status == 201  # not CHAT_INPUT


async def test_valid_commands_pass(server: LocalDiscordServer, bot: Bot) -> None:
    """Names Discord allows (scripts without case, Devanagari and Thai marks, - _ '), subcommands, bounds."""
    commands = [
        command(),
        command(name="चित्र-बनाओ"),  # Devanagari with its combining vowel signs
        command(name="วาดรูป"),  # Thai with its marks
        command(name="絵", description="描く"),  # no lower-case form: allowed as it is
        command(name="don't_stop-2"),
        command(name="contest", options=[sub("start", [option(name="theme", required=True),
                                                       option(type=4, name="hours", min_value=1, max_value=72)]),
                                         sub("admin", [sub("close")], kind=2)]),
        command(name="pick", options=[option(name="name", autocomplete=True, max_length=100, min_length=0),
                                      option(type=10, name="scale", choices=[{"name": "half", "value": 0.5}])]),
        {"name": "Save Image", "type": 3},
        {"name": "Show Gallery", "type": 2, "description": ""},
    ]
    reply = await bot.sync(commands)
    assert reply.status == 200, reply.body
    assert len(reply.body) == len(commands) and server.refusals == []


# ---------------------------------------------------------------------------------------------- messages


def rows(*custom_ids: list[str]) -> list[Body]:
    return [{"type": 1, "components": [{"type": 2, "style": 1, "label": c, "custom_id": c} for c in row]}
            for row in custom_ids]


def embed(**fields: Any) -> Body:
    return {"title": "t", "description": "d", **fields}


MESSAGE_CASES: list[tuple[str, Body, list[tuple[str, bytes]] | None, str]] = [
    ("content_2001", {"content": "x" * 2001}, None, "content"),
    ("embeds_11", {"embeds": [embed() for _ in range(11)]}, None, "embeds"),
    ("embed_title_257", {"embeds": [embed(title="t" * 257)]}, None, "embeds.0.title"),
    ("embed_description_4097", {"embeds": [embed(description="d" * 4097)]}, None, "embeds.0.description"),
    ("embed_fields_26", {"embeds": [embed(fields=[{"name": "n", "value": "v"}] * 26)]}, None, "embeds.0.fields"),
    ("field_name_257", {"embeds": [embed(fields=[{"name": "n" * 257, "value": "v"}])]}, None,
     "embeds.0.fields.0.name"),
    ("field_value_1025", {"embeds": [embed(fields=[{"name": "n", "value": "v" * 1025}])]}, None,
     "embeds.0.fields.0.value"),
    ("field_without_value", {"embeds": [embed(fields=[{"name": "n"}])]}, None, "embeds.0.fields.0.value"),
    ("footer_2049", {"embeds": [embed(footer={"text": "f" * 2049})]}, None, "embeds.0.footer.text"),
    ("author_257", {"embeds": [embed(author={"name": "a" * 257})]}, None, "embeds.0.author.name"),
    ("embeds_total_6001", {"embeds": [embed(description="d" * 3000, title="t"), embed(description="d" * 3000)]},
     None, "embeds"),
    ("action_rows_6", {"components": rows(*[[f"b{i}"] for i in range(6)])}, None, "components"),
    ("buttons_6_in_a_row", {"components": rows([f"b{i}" for i in range(6)])}, None, "components.0.components"),
    ("custom_id_101", {"components": rows(["c" * 101])}, None, "components.0.components.0.custom_id"),
    ("custom_id_repeated", {"components": rows(["again"], ["again"])}, None, "components.1.components.0.custom_id"),
    ("label_81", {"components": [{"type": 1, "components": [
        {"type": 2, "style": 1, "custom_id": "b", "label": "l" * 81}]}]}, None, "components.0.components.0.label"),
    ("button_outside_a_row", {"components": [{"type": 2, "style": 1, "custom_id": "b", "label": "b"}]}, None,
     "components.0.type"),
    ("link_button_without_url", {"components": [{"type": 1, "components": [
        {"type": 2, "style": 5, "label": "open"}]}]}, None, "components.0.components.0.url"),
    ("link_button_with_custom_id", {"components": [{"type": 1, "components": [
        {"type": 2, "style": 5, "label": "open", "url": "https://example.com", "custom_id": "x"}]}]}, None,
     "components.0.components.0.custom_id"),
    ("button_without_custom_id", {"components": [{"type": 1, "components": [
        {"type": 2, "style": 1, "label": "go"}]}]}, None, "components.0.components.0.custom_id"),
    ("select_sharing_its_row", {"components": [{"type": 1, "components": [
        {"type": 3, "custom_id": "s", "options": [{"label": "a", "value": "a"}]},
        {"type": 2, "style": 1, "custom_id": "b", "label": "b"}]}]}, None, "components.0.components"),
    ("empty_action_row", {"components": [{"type": 1, "components": []}]}, None, "components.0.components"),
    ("image_names_no_upload", {"embeds": [embed(image={"url": "attachment://b.png"})]}, [("a.png", b"png")],
     "embeds.0.image.url"),
    ("thumbnail_without_files", {"embeds": [embed(thumbnail={"url": "attachment://t.png"})]}, None,
     "embeds.0.thumbnail.url"),
    ("reply_to_missing_message", {"content": "hi", "message_reference": {"message_id": "123"}}, None,
     "message_reference"),
    ("mentions_parse_with_users", {"content": "hi", "allowed_mentions": {"parse": ["users"], "users": ["1"]}}, None,
     "allowed_mentions"),
    ("mentions_parse_unknown", {"content": "hi", "allowed_mentions": {"parse": ["here"]}}, None,
     "allowed_mentions.parse.0"),
    ("ephemeral_channel_message", {"content": "hi", "flags": 64}, None, "flags"),
]


@pytest.mark.parametrize(("case", "body", "files", "path"), MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES])
async def test_channel_message_refused(server: LocalDiscordServer, bot: Bot, case: str, body: Body,
                                       files: list[tuple[str, bytes]] | None, path: str) -> None:
    before = len(server.messages)
    assert_refused(server, await bot.post(server.general.id, body, files), 400, 50035, path)
    assert len(server.messages) == before


async def test_valid_messages_pass(server: LocalDiscordServer, bot: Bot) -> None:
    at_limits = {
        "content": "x" * 2000,
        "embeds": [embed(title="t" * 256, description="d" * 1000, fields=[{"name": "n", "value": "v"}] * 25,
                         footer={"text": "f" * 100}, author={"name": "a" * 256},
                         image={"url": "attachment://a.png"}), *[embed() for _ in range(9)]],
        "components": [*rows(*[[f"r{r}b{b}" for b in range(5)] for r in range(4)]),
                       {"type": 1, "components": [{"type": 2, "style": 5, "label": "open", "url": "https://x.y"}]}],
        "allowed_mentions": {"parse": ["roles"], "users": ["1"]},
        "flags": 4 | 4096,
    }
    reply = await bot.post(server.general.id, at_limits, [("a.png", b"png")])
    assert reply.status == 200, reply.body
    reference = {"message_id": reply.body["id"]}
    replied = await bot.post(server.general.id, {"content": "re", "message_reference": reference})
    assert replied.body["message_reference"]["message_id"] == reply.body["id"]
    lenient = await bot.post(server.general.id, {"content": "re", "message_reference": {
        "message_id": "123", "fail_if_not_exists": False}})
    assert lenient.status == 200 and "message_reference" not in lenient.body
    assert server.refusals == []


# ---------------------------------------------------------------------------------------------- every route


@pytest.fixture
async def synced(bot: Bot) -> Bot:
    reply = await bot.sync([command(), command(name="pick", options=[option(name="name", autocomplete=True)])])
    assert reply.status == 200, reply.body
    return bot


async def panel(server: LocalDiscordServer, bot: Bot) -> Message:
    reply = await bot.post(server.general.id, {"content": "panel", "components": rows(["go", "stop"])})
    return server.messages[int(reply.body["id"])]


async def command_interaction(server: LocalDiscordServer) -> Interaction:
    return await server.send_command(server.members["bob"], server.general, "imagine", {"prompt": "a fox"})


async def deferred(server: LocalDiscordServer, bot: Bot) -> Interaction:
    interaction = await command_interaction(server)
    assert (await bot.callback(interaction, {"type": 5})).status == 204
    return interaction


async def send_on_route(route: str, server: LocalDiscordServer, bot: Bot, body: Body) -> Reply:
    """The same message body on each route that takes one; returns the reply."""
    if route == "channel_create":
        return await bot.post(server.general.id, body)
    if route == "channel_edit":
        message = await panel(server, bot)
        return await bot.call("PATCH", f"/channels/{server.general.id}/messages/{message.id}", body)
    if route == "callback_message":
        return await bot.callback(await command_interaction(server), {"type": 4, "data": body})
    if route == "callback_update":
        press = await server.press_button(server.members["bob"], await panel(server, bot), "go")
        return await bot.callback(press, {"type": 7, "data": body})
    interaction = await deferred(server, bot)
    if route == "followup":
        return await bot.call("POST", bot.webhook(interaction), body)
    assert route == "edit_original"
    return await bot.call("PATCH", bot.webhook(interaction) + "/messages/@original", body)


ROUTES = ["channel_create", "channel_edit", "callback_message", "callback_update", "followup", "edit_original"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("rule", "body", "path"), [
    ("content_2001", {"content": "x" * 2001}, "content"),
    ("custom_id_repeated", {"content": "c", "components": rows(["same"], ["same"])},
     "components.1.components.0.custom_id"),
])
async def test_every_route_with_a_message_body_checks_it(server: LocalDiscordServer, synced: Bot, route: str,
                                                        rule: str, body: Body, path: str) -> None:
    reply = await send_on_route(route, server, synced, body)
    prefix = "data." if route.startswith("callback") else ""
    assert_refused(server, reply, 400, 50035, prefix + path)


@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_accepts_a_valid_body(server: LocalDiscordServer, synced: Bot, route: str) -> None:
    reply = await send_on_route(route, server, synced, {"content": "fine", "embeds": [embed()],
                                                        "components": rows(["a", "b"])})
    assert reply.status in (200, 204), reply.body
    assert server.refusals == []


# ---------------------------------------------------------------------------------------------- uploads


@pytest.mark.parametrize(("case", "files", "status", "code"), [
    ("eleven_files", [(f"f{i}.png", b"x") for i in range(11)], 400, 50035),
    ("a_file_over_10_mib", [("big.png", b"x" * (10 * MiB + 1))], 413, 40005),
    ("files_over_25_mib_together", [(f"f{i}.png", b"x" * (9 * MiB)) for i in range(3)], 413, 40005),
])
async def test_uploads_refused(server: LocalDiscordServer, bot: Bot, case: str, files: list[tuple[str, bytes]],
                               status: int, code: int) -> None:
    reply = await bot.post(server.general.id, {"content": "files"}, files)
    assert_refused(server, reply, status, code, "attachments" if status == 400 else None)


async def test_uploads_count_per_file_not_summed(server: LocalDiscordServer, bot: Bot) -> None:
    """Two 9 MiB files are fine: 10 MiB is a per-file limit (the old server summed them)."""
    files = [("a.png", b"a" * 9 * MiB), ("b.png", b"b" * 9 * MiB)]
    reply = await bot.post(server.general.id, {"content": "two"}, files)
    assert reply.status == 200, reply.body
    assert [a["size"] for a in reply.body["attachments"]] == [9 * MiB, 9 * MiB]


async def test_followup_upload_limit(server: LocalDiscordServer, synced: Bot) -> None:
    interaction = await deferred(server, synced)
    reply = await synced.call("POST", synced.webhook(interaction), {"content": "big"},
                              [("big.png", b"x" * (10 * MiB + 1))])
    assert_refused(server, reply, 413, 40005)


# ---------------------------------------------------------------------------------------------- callbacks


async def component_interaction(server: LocalDiscordServer, bot: Bot) -> Interaction:
    return await server.press_button(server.members["bob"], await panel(server, bot), "go")


async def autocomplete_interaction(server: LocalDiscordServer, bot: Bot) -> Interaction:
    return await server.autocomplete(server.members["bob"], server.general, "pick", {"name": "c"}, focused="name")


async def modal_submit(server: LocalDiscordServer, bot: Bot, *, from_component: bool = False) -> Interaction:
    opened = await (component_interaction(server, bot) if from_component else command_interaction(server))
    modal = {"custom_id": "m", "title": "Rename", "components": [
        {"type": 1, "components": [{"type": 4, "custom_id": "name", "label": "Name", "style": 1}]}]}
    assert (await bot.callback(opened, {"type": 9, "data": modal})).status == 204
    return await server.submit_modal(server.members["bob"], opened, {"name": "fox"})


async def command_for(server: LocalDiscordServer, bot: Bot) -> Interaction:
    return await command_interaction(server)


Maker = Callable[[LocalDiscordServer, Bot], Any]
MODAL = {"custom_id": "m", "title": "t", "components": [
    {"type": 1, "components": [{"type": 4, "custom_id": "x", "label": "x", "style": 1}]}]}

CALLBACK_CASES: list[tuple[str, Maker, Body, str]] = [
    ("update_message_for_a_command", command_for, {"type": 7, "data": {"content": "x"}}, "type"),
    ("deferred_update_for_a_command", command_for, {"type": 6}, "type"),
    ("autocomplete_result_for_a_command", command_for, {"type": 8, "data": {"choices": []}}, "type"),
    ("pong_for_a_command", command_for, {"type": 1}, "type"),
    ("unknown_type", command_for, {"type": 99}, "type"),
    ("message_for_autocomplete", autocomplete_interaction, {"type": 4, "data": {"content": "x"}}, "type"),
    ("modal_for_autocomplete", autocomplete_interaction, {"type": 9, "data": MODAL}, "type"),
    ("modal_for_a_modal_submit", modal_submit, {"type": 9, "data": MODAL}, "type"),
    ("update_for_a_modal_from_a_command", modal_submit, {"type": 7, "data": {"content": "x"}}, "type"),
    ("autocomplete_result_for_a_button", component_interaction, {"type": 8, "data": {"choices": []}}, "type"),
    ("message_flag_urgent", command_for, {"type": 4, "data": {"content": "x", "flags": 1 << 4}}, "data.flags"),
    ("deferral_flag_loading", command_for, {"type": 5, "data": {"flags": 1 << 7}}, "data.flags"),
    ("update_turning_ephemeral", component_interaction, {"type": 7, "data": {"content": "x", "flags": 64}},
     "data.flags"),
    ("modal_title_46", command_for, {"type": 9, "data": {**MODAL, "title": "t" * 46}}, "data.title"),
    ("modal_without_components", command_for, {"type": 9, "data": {**MODAL, "components": []}}, "data.components"),
    ("autocomplete_26_choices", autocomplete_interaction, {"type": 8, "data": {"choices": choices(26)}},
     "data.choices"),
]


@pytest.mark.parametrize(("case", "make", "body", "path"), CALLBACK_CASES, ids=[c[0] for c in CALLBACK_CASES])
async def test_callback_refused(server: LocalDiscordServer, synced: Bot, case: str, make: Maker, body: Body,
                                path: str) -> None:
    interaction = await make(server, synced)
    assert_refused(server, await synced.callback(interaction, body), 400, 50035, path)
    assert not interaction.acknowledged


async def test_second_callback_is_refused_with_40060(server: LocalDiscordServer, synced: Bot) -> None:
    interaction = await command_interaction(server)
    assert (await synced.callback(interaction, {"type": 5, "data": {"flags": 64}})).status == 204
    assert_refused(server, await synced.callback(interaction, {"type": 4, "data": {"content": "x"}}), 400, 40060)


@pytest.mark.parametrize(("case", "make", "body"), [
    ("ephemeral_message_for_a_command", command_for, {"type": 4, "data": {"content": "x", "flags": 64 | 4}}),
    ("modal_for_a_command", command_for, {"type": 9, "data": MODAL}),
    ("deferred_update_for_a_button", component_interaction, {"type": 6}),
    ("update_for_a_modal_from_a_button", lambda s, b: modal_submit(s, b, from_component=True),
     {"type": 7, "data": {"content": "renamed"}}),
    ("choices_for_autocomplete", autocomplete_interaction, {"type": 8, "data": {"choices": choices(25)}}),
])
async def test_valid_callbacks_pass(server: LocalDiscordServer, synced: Bot, case: str, make: Maker,
                                    body: Body) -> None:
    interaction = await make(server, synced)
    reply = await synced.callback(interaction, body)
    assert reply.status == 204, reply.body
    assert interaction.response_type == body["type"] and server.refusals == []


# ---------------------------------------------------------------------------------------------- permissions


async def members_message(server: LocalDiscordServer, *, reacted: str | None = None) -> Message:
    message = await server.send_message(server.members["bob"], server.general, "look")
    if reacted:
        await server.react(server.members["bob"], message, reacted)
    return message


def reactions(server: LocalDiscordServer, message: Message, emoji: str, who: str = "@me") -> str:
    return f"/channels/{server.general.id}/messages/{message.id}/reactions/{quote(emoji)}/{who}"


async def post_embed(server: LocalDiscordServer, bot: Bot) -> Reply:
    return await bot.post(server.general.id, {"embeds": [embed()]})


async def post_file(server: LocalDiscordServer, bot: Bot) -> Reply:
    return await bot.post(server.general.id, {"content": "f"}, [("a.png", b"png")])


async def post_text(server: LocalDiscordServer, bot: Bot) -> Reply:
    return await bot.post(server.general.id, {"content": "hello"})


async def react_new(server: LocalDiscordServer, bot: Bot) -> Reply:
    return await bot.call("PUT", reactions(server, await members_message(server), "🔄"))


async def react_existing(server: LocalDiscordServer, bot: Bot) -> Reply:
    return await bot.call("PUT", reactions(server, await members_message(server, reacted="🔄"), "🔄"))


async def reply_to_member(server: LocalDiscordServer, bot: Bot) -> Reply:
    message = await members_message(server)
    return await bot.post(server.general.id, {"content": "re", "message_reference": {"message_id": str(message.id)}})


async def read_message(server: LocalDiscordServer, bot: Bot) -> Reply:
    message = await members_message(server)
    return await bot.call("GET", f"/channels/{server.general.id}/messages/{message.id}")


async def remove_members_reaction(server: LocalDiscordServer, bot: Bot) -> Reply:
    message = await members_message(server, reacted="⭐")
    return await bot.call("DELETE", reactions(server, message, "⭐", str(server.members["bob"].id)))


async def delete_members_message(server: LocalDiscordServer, bot: Bot) -> Reply:
    message = await members_message(server)
    return await bot.call("DELETE", f"/channels/{server.general.id}/messages/{message.id}")


async def clear_reactions(server: LocalDiscordServer, bot: Bot) -> Reply:
    message = await members_message(server, reacted="⭐")
    return await bot.call("DELETE", f"/channels/{server.general.id}/messages/{message.id}/reactions")


Action = Callable[[LocalDiscordServer, Bot], Any]
PERMISSION_CASES: list[tuple[str, int, Action, int]] = [
    ("send_without_send_messages", SEND_MESSAGES, post_text, 50013),
    ("embed_without_embed_links", EMBED_LINKS, post_embed, 50013),
    ("file_without_attach_files", ATTACH_FILES, post_file, 50013),
    ("new_reaction_without_add_reactions", ADD_REACTIONS, react_new, 50013),
    ("reaction_without_history", READ_MESSAGE_HISTORY, react_existing, 50013),
    ("reply_without_history", READ_MESSAGE_HISTORY, reply_to_member, 50013),
    ("read_without_history", READ_MESSAGE_HISTORY, read_message, 50013),
    ("send_without_view_channel", VIEW_CHANNEL, post_text, 50001),
    ("file_without_send_messages", SEND_MESSAGES, post_file, 50013),  # implicit: no Send, no Attach
]


@pytest.mark.parametrize(("case", "withheld", "action", "code"), PERMISSION_CASES,
                         ids=[c[0] for c in PERMISSION_CASES])
async def test_withheld_permission_refused(server: LocalDiscordServer, bot: Bot, case: str, withheld: int,
                                           action: Action, code: int) -> None:
    assert (await action(server, bot)).status in (200, 204)  # allowed with the invite's permissions
    server.withhold_permission(withheld, server.general)
    assert_refused(server, await action(server, bot), 403, code)


@pytest.mark.parametrize(("case", "action"), [
    ("remove_a_members_reaction", remove_members_reaction),
    ("delete_a_members_message", delete_members_message),
    ("clear_all_reactions", clear_reactions),
])
async def test_manage_messages_is_not_in_the_invite(server: LocalDiscordServer, bot: Bot, case: str,
                                                    action: Action) -> None:
    assert_refused(server, await action(server, bot), 403, 50013)
    server.grant_permission(MANAGE_MESSAGES, server.general)
    assert (await action(server, bot)).status == 204


async def test_bot_role_has_exactly_the_invite_permissions(server: LocalDiscordServer, bot: Bot) -> None:
    bot_role = next(r for r in server.guild.roles if r.managed)
    assert bot_role.permissions == INVITE_PERMISSIONS
    assert not server.permissions_in(server.general) & MANAGE_MESSAGES
    server.withhold_permission(ATTACH_FILES, server.art)
    assert not server.permissions_in(server.art) & ATTACH_FILES and server.permissions_in(server.general) & ATTACH_FILES
    channel = await bot.call("GET", f"/channels/{server.art.id}")
    assert channel.body["permission_overwrites"] == [
        {"id": str(server.bot_user.id), "type": 1, "allow": "0", "deny": str(ATTACH_FILES)}]
    server.clear_overwrites(server.art)
    assert server.permissions_in(server.art) & ATTACH_FILES


async def test_what_permissions_do_not_restrict(server: LocalDiscordServer, synced: Bot) -> None:
    """An existing reaction needs no Add Reactions; history without the permission is empty, not refused;
    followups go through the interaction's webhook, which the bot's channel permissions do not restrict."""
    server.withhold_permission(ADD_REACTIONS | ATTACH_FILES | EMBED_LINKS | SEND_MESSAGES, server.general)
    assert (await react_existing(server, synced)).status == 204
    interaction = await deferred(server, synced)
    followup = await synced.call("POST", synced.webhook(interaction), {"embeds": [embed()]}, [("a.png", b"png")])
    assert followup.status == 200, followup.body
    server.withhold_permission(READ_MESSAGE_HISTORY, server.general)
    history = await synced.call("GET", f"/channels/{server.general.id}/messages")
    assert history.status == 200 and history.body == []
    assert server.refusals == []


# ---------------------------------------------------------------------------------------------- emoji


@pytest.mark.parametrize("emoji", ["unknown:123456", "star", ":star:", "x:notanid"])
async def test_unknown_emoji_refused(server: LocalDiscordServer, bot: Bot, emoji: str) -> None:
    message = await members_message(server)
    assert_refused(server, await bot.call("PUT", reactions(server, message, emoji)), 400, 10014)


async def test_known_emoji_pass(server: LocalDiscordServer, bot: Bot) -> None:
    custom = server.add_emoji(server.guild, "blobcat")
    message = await members_message(server)
    for emoji in (f"blobcat:{custom.id}", "🔄", "⭐", "1\ufe0f\u20e3", "👍🏽"):
        reply = await bot.call("PUT", reactions(server, message, emoji))
        assert reply.status == 204, (emoji, reply.body)
    assert server.refusals == []
