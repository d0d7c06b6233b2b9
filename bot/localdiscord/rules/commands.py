"""Application command registration (bulk PUT, POST, PATCH; global and guild), as Discord validates it.

Sources: the OpenAPI schemas ``ApplicationCommandCreateRequest`` and ``ApplicationCommand*Option`` (name 1-32,
description <= 100, <= 25 options, <= 25 choices, choice name <= 100, min_length 0-6000, max_length 1-6000)
and https://discord.com/developers/docs/interactions/application-commands: the name regex and lower-case rule,
required options before optional ones, unique names, the 8,000-character total per command, at most 100
global (and 100 per guild) CHAT_INPUT commands. A string choice value is <= 100 characters in the docs (the
OpenAPI schema allows 6,000); the stricter documented limit is kept.
"""

from __future__ import annotations

from typing import Any

import regex

from bot.localdiscord.errors import DiscordError
from bot.localdiscord.rules.form import FormErrors, Path

CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND, PRIMARY_ENTRY_POINT = 1, 2, 3, 4
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    range(1, 12))
OPTION_TYPES = range(1, 12)
WITH_CHOICES = (STRING, INTEGER, NUMBER)
SUBCOMMANDS = (SUB_COMMAND, SUB_COMMAND_GROUP)

NAME_PATTERN = regex.compile(r"^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")
MAX_OPTIONS = 25
MAX_CHOICES = 25
MAX_DESCRIPTION = 100
MAX_CHOICE_NAME = 100
MAX_CHOICE_STRING = 100
MAX_STRING_LENGTH = 6000
MAX_COMMAND_SIZE = 8000
MAX_CHAT_INPUT_COMMANDS = 100
INT53 = 2**53


def check_name(errors: FormErrors, path: Path, name: Any, *, chat_input: bool) -> None:
    """CHAT_INPUT command and option names: Discord's regex, and lower case where a letter has one."""
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        errors.length_between(path, name if isinstance(name, str) else "", 1, 32)
        return
    if not chat_input:
        return  # USER and MESSAGE commands may be mixed case and contain spaces
    if not NAME_PATTERN.match(name):
        errors.add(path, "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}")
    elif name != name.lower():
        errors.add(path, "APPLICATION_COMMAND_INVALID_NAME", f"Command name must be lower case: {name!r}")


def command_size(command: dict[str, Any]) -> int:
    """Characters that count toward the 8,000 limit: names, descriptions, choice names and values, nested."""
    def options_size(options: list[Any]) -> int:
        total = 0
        for option in options:
            if not isinstance(option, dict):
                continue
            total += len(str(option.get("name") or "")) + len(str(option.get("description") or ""))
            for choice in option.get("choices") or []:
                if isinstance(choice, dict):
                    total += len(str(choice.get("name") or "")) + len(str(choice.get("value") or ""))
            total += options_size(option.get("options") or [])
        return total

    return (len(str(command.get("name") or "")) + len(str(command.get("description") or ""))
            + options_size(command.get("options") or []))


def check_command(errors: FormErrors, path: Path, command: Any) -> None:
    """Every rule for one command body; problems are added to ``errors`` under ``path``."""
    if not isinstance(command, dict):
        errors.add(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        return
    kind = command.get("type") or CHAT_INPUT
    if kind not in (CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND, PRIMARY_ENTRY_POINT):
        errors.add(path + ("type",), "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4}.")
        return
    chat_input = kind == CHAT_INPUT
    errors.required(path + ("name",), "name" in command)
    if "name" in command:
        check_name(errors, path + ("name",), command["name"], chat_input=chat_input)
    description = command.get("description")
    if chat_input:
        errors.length_between(path + ("description",), description, 1, MAX_DESCRIPTION)
        check_options(errors, path + ("options",), command.get("options") or [], parent=None)
    else:
        if description:
            errors.add(path + ("description",), "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
                       "Context menu commands cannot have description")
        if command.get("options"):
            errors.add(path + ("options",), "APPLICATION_COMMAND_CONTEXT_MENU_OPTIONS",
                       "Context menu commands cannot have options")
    if command_size(command) > MAX_COMMAND_SIZE:
        errors.add(path, "APPLICATION_COMMAND_TOO_LARGE", f"Command exceeds maximum size ({MAX_COMMAND_SIZE})")


def check_options(errors: FormErrors, path: Path, options: Any, *, parent: int | None) -> None:
    """An ``options`` list: count, unique names, required first, nesting, then each option."""
    if not isinstance(options, list):
        errors.add(path, "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        return
    errors.max_length(path, options, MAX_OPTIONS)
    seen: set[str] = set()
    optional_seen = False
    kinds = [o.get("type") for o in options if isinstance(o, dict)]
    if any(k in SUBCOMMANDS for k in kinds) and not all(k in SUBCOMMANDS for k in kinds):
        errors.add(path, "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
                   "Sub-command and sub-command group option types are mutually exclusive to all other types")
    for index, option in enumerate(options):
        here = path + (index,)
        if not isinstance(option, dict):
            errors.add(here, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            continue
        name = option.get("name")
        if isinstance(name, str):
            if name in seen:
                errors.add(here + ("name",), "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                           f"Option name {name} is already used in these options")
            seen.add(name)
        if option.get("required") and optional_seen:
            errors.add(here + ("required",), "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                       "Required options must be placed before non-required options")
        if not option.get("required") and option.get("type") not in SUBCOMMANDS:
            optional_seen = True
        check_option(errors, here, option, parent=parent)


def check_option(errors: FormErrors, path: Path, option: dict[str, Any], *, parent: int | None) -> None:
    kind = option.get("type")
    if kind not in OPTION_TYPES:
        errors.add(path + ("type",), "BASE_TYPE_CHOICES", f"Value must be one of {set(OPTION_TYPES)}.")
        return
    if parent == SUB_COMMAND_GROUP and kind != SUB_COMMAND:
        errors.add(path + ("type",), "APPLICATION_COMMAND_OPTION_TYPE_INVALID",
                   "A sub-command group may only contain sub-commands")
    elif parent == SUB_COMMAND and kind in SUBCOMMANDS:
        errors.add(path + ("type",), "APPLICATION_COMMAND_OPTION_TYPE_INVALID",
                   "A sub-command may not contain sub-commands or groups")
    errors.required(path + ("name",), "name" in option)
    if "name" in option:
        check_name(errors, path + ("name",), option["name"], chat_input=True)
    errors.length_between(path + ("description",), option.get("description"), 1, MAX_DESCRIPTION)
    if kind in SUBCOMMANDS:
        check_options(errors, path + ("options",), option.get("options") or [], parent=kind)
        return
    choices = option.get("choices")
    if choices:
        if kind not in WITH_CHOICES:
            errors.add(path + ("choices",), "APPLICATION_COMMAND_OPTION_CHOICES_INVALID",
                       "Only string, integer and number options may have choices")
        if option.get("autocomplete"):
            errors.add(path + ("autocomplete",), "APPLICATION_COMMAND_AUTOCOMPLETE_WITH_CHOICES",
                       "Autocomplete cannot be enabled together with choices")
        errors.max_length(path + ("choices",), choices, MAX_CHOICES)
        for index, choice in enumerate(choices if isinstance(choices, list) else []):
            check_choice(errors, path + ("choices", index), choice, kind)
    check_bounds(errors, path, option, kind)


def check_choice(errors: FormErrors, path: Path, choice: Any, kind: int) -> None:
    if not isinstance(choice, dict):
        errors.add(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        return
    errors.length_between(path + ("name",), choice.get("name"), 1, MAX_CHOICE_NAME)
    value = choice.get("value")
    errors.required(path + ("value",), "value" in choice)
    if "value" not in choice:
        return
    if kind == STRING:
        if not isinstance(value, str):
            errors.add(path + ("value",), "BASE_TYPE_STRING", "Must be a string.")
        else:
            errors.max_length(path + ("value",), value, MAX_CHOICE_STRING)
    elif kind == INTEGER and (isinstance(value, bool) or not isinstance(value, int) or abs(value) > INT53):
        errors.add(path + ("value",), "NUMBER_TYPE_COERCE", f"Value \"{value}\" is not int.")
    elif kind == NUMBER and (isinstance(value, bool) or not isinstance(value, int | float)):
        errors.add(path + ("value",), "NUMBER_TYPE_COERCE", f"Value \"{value}\" is not a number.")


def check_bounds(errors: FormErrors, path: Path, option: dict[str, Any], kind: int) -> None:
    """min/max value only on numbers and ordered; min/max length only on strings, within 0-6000 and ordered."""
    low, high = option.get("min_value"), option.get("max_value")
    if (low is not None or high is not None) and kind not in (INTEGER, NUMBER):
        errors.add(path + ("min_value" if low is not None else "max_value",),
                   "APPLICATION_COMMAND_OPTION_BOUNDS_INVALID", "Only integer and number options have values")
    for key, value in (("min_value", low), ("max_value", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or abs(value) > INT53):
            errors.add(path + (key,), "NUMBER_TYPE_COERCE", f"Value \"{value}\" is not a number.")
    if isinstance(low, int | float) and isinstance(high, int | float) and low > high:
        errors.add(path + ("min_value",), "APPLICATION_COMMAND_OPTION_BOUNDS_INVALID",
                   "min_value must be less than or equal to max_value")
    min_length, max_length = option.get("min_length"), option.get("max_length")
    if (min_length is not None or max_length is not None) and kind != STRING:
        errors.add(path + ("min_length" if min_length is not None else "max_length",),
                   "APPLICATION_COMMAND_OPTION_BOUNDS_INVALID", "Only string options have lengths")
    if min_length is not None and not (isinstance(min_length, int) and 0 <= min_length <= MAX_STRING_LENGTH):
        errors.add(path + ("min_length",), "NUMBER_TYPE_MAX", f"int value should be between 0 and {MAX_STRING_LENGTH}.")
    if max_length is not None and not (isinstance(max_length, int) and 1 <= max_length <= MAX_STRING_LENGTH):
        errors.add(path + ("max_length",), "NUMBER_TYPE_MAX", f"int value should be between 1 and {MAX_STRING_LENGTH}.")
    if isinstance(min_length, int) and isinstance(max_length, int) and min_length > max_length:
        errors.add(path + ("min_length",), "APPLICATION_COMMAND_OPTION_BOUNDS_INVALID",
                   "min_length must be less than or equal to max_length")


def check_bulk(commands: Any) -> None:
    """A bulk overwrite (PUT): a list of valid commands with unique (name, type) and <= 100 CHAT_INPUT."""
    errors = FormErrors()
    if not isinstance(commands, list):
        errors.add((), "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        errors.raise_if_any()
    seen: set[tuple[Any, Any]] = set()
    for index, command in enumerate(commands):
        check_command(errors, (index,), command)
        if isinstance(command, dict):
            key = (command.get("name"), command.get("type") or CHAT_INPUT)
            if key in seen:
                errors.add((index, "name"), "APPLICATION_COMMANDS_DUPLICATE_NAME",
                           "Application command names must be unique")
            seen.add(key)
    errors.raise_if_any()
    check_count(commands)


def check_single(command: Any) -> None:
    """A POST or PATCH body (PATCH: merged with the stored command first)."""
    errors = FormErrors()
    check_command(errors, (), command)
    errors.raise_if_any()


def check_count(commands: list[dict[str, Any]]) -> None:
    """At most 100 CHAT_INPUT commands in one scope (global, or one guild)."""
    chat_input = sum(1 for c in commands if (c.get("type") or CHAT_INPUT) == CHAT_INPUT)
    if chat_input > MAX_CHAT_INPUT_COMMANDS:
        raise DiscordError(400, 30032, f"Maximum number of application commands reached ({MAX_CHAT_INPUT_COMMANDS})")
