"""Turning what a person types on the page into the options of a synced slash command.

Discord's client builds typed options from the command definition; the page has a plain text box, so this does
the same from text such as ``/imagine prompt:a red fox seed:42 steps:4`` (or ``/imagine a red fox``, or
``/settings limits {"images_per_window": 5}``). It works from the definitions the bot actually synced, so every
command and option the bot has is usable without the page knowing about it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

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
)

SUBCOMMAND_TYPES = (SUB_COMMAND, SUB_COMMAND_GROUP)
TRUE_WORDS = ("1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n")


class CommandTextError(ValueError):
    """The text cannot become a command; the message is shown to the person typing."""


def find_definition(commands: Iterable[dict[str, Any]], name: str) -> dict[str, Any]:
    """The slash command (type 1) called ``name`` among the synced ``commands``."""
    available = []
    for command in commands:
        if command.get("type", 1) != 1:
            continue
        if command["name"] == name:
            return command
        available.append(command["name"])
    raise CommandTextError(f"unknown command /{name}; available: {', '.join('/' + n for n in sorted(available))}")


def leaf_options(command: dict[str, Any], path: list[str]) -> list[dict[str, Any]]:
    """The option definitions of ``/command sub group...`` (the leaf that takes values)."""
    defs = command.get("options") or []
    for part in path:
        sub = next((o for o in defs if o["name"] == part and o["type"] in SUBCOMMAND_TYPES), None)
        if sub is None:
            raise CommandTextError(f"/{command['name']} has no subcommand {part!r}")
        defs = sub.get("options") or []
    return defs


def coerce_value(definition: dict[str, Any], value: Any, resolve: Callable[[int, str], Any] | None = None) -> Any:
    """A typed option value from what was typed (strings from the text box or the form).

    Choices may be given by their label (``Euler a``) or their value (``euler_a``); ``resolve(type, text)``
    turns ``#art`` / ``@bob`` / role names into ids for CHANNEL, USER and ROLE options.
    """
    kind, name = definition["type"], definition["name"]
    if kind == ATTACHMENT:
        return attachment_value(name, value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    choices = definition.get("choices") or []
    for choice in choices:
        if text.lower() in (str(choice["name"]).lower(), str(choice["value"]).lower()):
            return choice["value"]
    try:
        if kind == INTEGER:
            return int(text)
        if kind == NUMBER:
            return float(text)
    except ValueError:
        raise CommandTextError(f"option {name}: {text!r} is not a number") from None
    if kind == BOOLEAN:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise CommandTextError(f"option {name}: say true or false, not {text!r}")
    if kind in (CHANNEL, USER, ROLE, MENTIONABLE) and resolve is not None:
        return resolve(kind, text)
    return value if kind == STRING else text


def attachment_value(name: str, value: Any) -> tuple[str, bytes]:
    """An uploaded file from the page, ``{"filename": ..., "data": <base64>}``, as the local server takes it."""
    if not isinstance(value, dict) or not isinstance(value.get("filename"), str) or "data" not in value:
        raise CommandTextError(f"option {name}: attach a file (the page sends {{filename, data}})")
    try:
        data = base64.b64decode(str(value["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise CommandTextError(f"option {name}: the file's data is not base64") from None
    return value["filename"].strip() or "upload", data


def parse_command_text(text: str, commands: Iterable[dict[str, Any]],
                       resolve: Callable[[int, str], Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``("contest start", {"theme": "foxes"})`` from ``/contest start theme:foxes``.

    Options are ``name:value`` pairs (a value runs until the next known ``name:``), or one JSON object. Text
    before the first ``name:`` goes to the first required string option, so ``/imagine a red fox`` works.
    """
    text = text.strip()
    if not text.startswith("/"):
        raise CommandTextError("a command starts with /, e.g. /imagine prompt:a red fox")
    words = text[1:].split(None, 1)
    if not words:
        raise CommandTextError("type a command name after /")
    command = find_definition(list(commands), words[0].lower())
    rest = words[1] if len(words) > 1 else ""
    path: list[str] = []
    defs = command.get("options") or []
    while any(o["type"] in SUBCOMMAND_TYPES for o in defs):
        parts = rest.split(None, 1)
        subs = {o["name"]: o for o in defs if o["type"] in SUBCOMMAND_TYPES}
        if not parts or parts[0].lower() not in subs:
            raise CommandTextError(f"/{' '.join([command['name'], *path])} needs a subcommand: "
                                   f"{', '.join(sorted(subs))}")
        path.append(parts[0].lower())
        defs = subs[parts[0].lower()].get("options") or []
        rest = parts[1] if len(parts) > 1 else ""
    full_name = " ".join([command["name"], *path])
    return full_name, parse_options_text(rest, defs, resolve, command_name=full_name)


def parse_options_text(rest: str, defs: list[dict[str, Any]], resolve: Callable[[int, str], Any] | None = None,
                       *, command_name: str = "command") -> dict[str, Any]:
    """Options from ``name:value`` text or a JSON object, typed by ``defs``."""
    by_name = {d["name"]: d for d in defs}
    rest = rest.strip()
    raw: dict[str, Any] = {}
    if rest.startswith("{"):
        try:
            loaded = json.loads(rest)
        except ValueError as exc:
            raise CommandTextError(f"the options are not valid JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise CommandTextError("the options JSON must be an object, e.g. {\"prompt\": \"a fox\"}")
        raw = loaded
    elif rest:
        names = sorted(by_name, key=len, reverse=True)
        marker = re.compile(r"(?:^|(?<=\s))(" + "|".join(re.escape(n) for n in names) + r"):", re.IGNORECASE) \
            if names else None
        matches = list(marker.finditer(rest)) if marker else []
        leading = rest[:matches[0].start()].strip() if matches else rest
        if leading:
            target = next((d for d in defs if d.get("required") and d["type"] == STRING), None)
            if target is None:
                hint = ", ".join(f"{n}:" for n in by_name) or "no options"
                raise CommandTextError(f"/{command_name}: write options as name:value ({hint})")
            raw[target["name"]] = leading
        for i, match in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(rest)
            raw[match.group(1).lower()] = rest[match.end():end].strip()
    return coerce_options(raw, defs, resolve)


def coerce_options(raw: dict[str, Any], defs: list[dict[str, Any]],
                   resolve: Callable[[int, str], Any] | None = None) -> dict[str, Any]:
    """Typed options; empty form fields are left out (an option not given), unknown names stay for the server
    to refuse with the list of known ones."""
    by_name = {d["name"]: d for d in defs}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        definition = by_name.get(key)
        options[key] = coerce_value(definition, value, resolve) if definition else value
    return options
