"""Text typed on the playground page -> typed slash-command options, from the definitions the bot synced."""

from __future__ import annotations

import base64

import pytest

from bot.localdiscord.models import ATTACHMENT, BOOLEAN, CHANNEL, INTEGER, NUMBER, STRING, SUB_COMMAND
from bot.playground.commands import CommandTextError, coerce_options, leaf_options, parse_command_text

COMMANDS = [
    {"name": "imagine", "type": 1, "options": [
        {"name": "prompt", "type": STRING, "required": True},
        {"name": "negative_prompt", "type": STRING},
        {"name": "seed", "type": INTEGER},
        {"name": "steps", "type": INTEGER},
        {"name": "guidance", "type": NUMBER},
        {"name": "scheduler", "type": STRING, "choices": [{"name": "Euler a", "value": "euler_a"},
                                                          {"name": "DPM++ 2M", "value": "dpmpp_2m"}]},
        {"name": "image", "type": ATTACHMENT},
    ]},
    {"name": "queue", "type": 1},
    {"name": "contest", "type": 1, "options": [
        {"name": "start", "type": SUB_COMMAND, "options": [
            {"name": "theme", "type": STRING, "required": True},
            {"name": "minutes", "type": INTEGER},
            {"name": "channel", "type": CHANNEL},
            {"name": "public", "type": BOOLEAN},
        ]},
        {"name": "status", "type": SUB_COMMAND},
    ]},
    {"name": "Rerun", "type": 3},  # a message context command: never a slash command
]


def resolve(kind: int, text: str) -> int:
    return {"#art": 11, "art": 11}[text]


def test_name_value_pairs_are_typed_from_the_definition() -> None:
    name, options = parse_command_text(
        "/imagine prompt:a red fox, at dawn seed:42 steps: 4 guidance:6.5 negative_prompt:blurry", COMMANDS)
    assert name == "imagine"
    assert options == {"prompt": "a red fox, at dawn", "seed": 42, "steps": 4, "guidance": 6.5,
                       "negative_prompt": "blurry"}


def test_leading_text_is_the_required_string_option() -> None:
    assert parse_command_text("/imagine a lighthouse: stormy sea seed:1", COMMANDS) == (
        "imagine", {"prompt": "a lighthouse: stormy sea", "seed": 1})


def test_choices_by_label_or_value_and_subcommands() -> None:
    assert parse_command_text("/imagine a cat scheduler:DPM++ 2M", COMMANDS)[1]["scheduler"] == "dpmpp_2m"
    assert parse_command_text("/imagine a cat scheduler:euler_a", COMMANDS)[1]["scheduler"] == "euler_a"
    assert parse_command_text("/contest start theme:foxes minutes:5 channel:#art public:yes", COMMANDS, resolve) == (
        "contest start", {"theme": "foxes", "minutes": 5, "channel": 11, "public": True})
    assert parse_command_text("/contest status", COMMANDS) == ("contest status", {})
    assert parse_command_text("/queue", COMMANDS) == ("queue", {})


def test_json_options() -> None:
    assert parse_command_text('/imagine {"prompt": "a fox", "seed": "3", "steps": 2}', COMMANDS) == (
        "imagine", {"prompt": "a fox", "seed": 3, "steps": 2})


@pytest.mark.parametrize(("text", "expected"), [
    ("imagine a cat", "starts with /"),
    ("/paint a cat", "unknown command /paint"),
    ("/Rerun", "unknown command"),
    ("/contest", "needs a subcommand: start, status"),
    ("/imagine a cat seed:many", "seed: 'many' is not a number"),
    ("/contest start theme:x public:maybe", "true or false"),
    ("/queue now please", "write options as name:value"),
    ("/imagine {not json", "not valid JSON"),
])
def test_errors_say_what_to_type(text: str, expected: str) -> None:
    with pytest.raises(CommandTextError, match=expected.replace("(", r"\(").replace("+", r"\+")):
        parse_command_text(text, COMMANDS)


def test_a_file_from_the_page_becomes_an_attachment_option() -> None:
    defs = leaf_options(COMMANDS[0], [])
    data = b"\x89PNG\r\n\x1a\n some picture"
    options = coerce_options({"prompt": "a fox", "image": {"filename": "in.png",
                                                           "data": base64.b64encode(data).decode()}}, defs)
    assert options == {"prompt": "a fox", "image": ("in.png", data)}


@pytest.mark.parametrize(("value", "expected"), [
    ("in.png", "attach a file"),
    ({"filename": "in.png"}, "attach a file"),
    ({"filename": "in.png", "data": "not base64!"}, "not base64"),
])
def test_a_bad_file_from_the_page_says_so(value: object, expected: str) -> None:
    with pytest.raises(CommandTextError, match=expected):
        coerce_options({"prompt": "a fox", "image": value}, leaf_options(COMMANDS[0], []))
    with pytest.raises(CommandTextError, match="attach a file"):
        parse_command_text("/imagine a fox image:in.png", COMMANDS)
