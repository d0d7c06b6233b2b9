"""A message body (create or edit, on any route): content, embeds, components, mentions, flags, references.

Sources: OpenAPI ``MessageCreateRequest``/``IncomingWebhookRequestPartial`` (<= 10 embeds, <= 10 attachments),
``RichEmbed*`` (title 256, description 4096, <= 25 fields, field name 256 and value 1024, footer 2048, author
256), ``ActionRowComponentForMessageRequest`` (1-5 components), ``ButtonComponentForMessageRequest``
(custom_id 1-100, label 80, url 512); https://discord.com/developers/docs/resources/message (content 2000 for
bots, 6000 characters across all embeds, ``attachment://`` names an uploaded file, allowed mentions'
``parse`` excludes the matching id list) and .../components/reference (<= 5 action rows without
IS_COMPONENTS_V2, a select fills its row, link buttons have a url and no custom_id, custom ids unique).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from bot.localdiscord.models import EPHEMERAL
from bot.localdiscord.rules.form import FormErrors, Path

# Message flags (https://discord.com/developers/docs/resources/message#message-object-message-flags).
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_VOICE_MESSAGE = 1 << 13
IS_COMPONENTS_V2 = 1 << 15

CHANNEL_MESSAGE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_VOICE_MESSAGE | IS_COMPONENTS_V2
INTERACTION_MESSAGE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2
EDITABLE_FLAGS = SUPPRESS_EMBEDS | IS_COMPONENTS_V2

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBEDS_TOTAL = 6000
MAX_ACTION_ROWS = 5
MAX_ROW_WIDTH = 5
MAX_V2_COMPONENTS = 40
MAX_CUSTOM_ID = 100
MAX_LABEL = 80
MAX_URL = 512
MAX_SELECT_OPTIONS = 25
MAX_MENTION_IDS = 100

# Embed strings: (path inside the embed, limit); all of them also count toward the 6,000 total.
EMBED_TEXT_LIMITS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("title",), 256), (("description",), 4096), (("footer", "text"), 2048), (("author", "name"), 256),
)
EMBED_URLS = (("url",), ("image", "url"), ("thumbnail", "url"), ("author", "icon_url"), ("footer", "icon_url"))
MAX_EMBED_FIELDS = 25
MAX_FIELD_NAME = 256
MAX_FIELD_VALUE = 1024

ACTION_ROW, BUTTON, STRING_SELECT, TEXT_INPUT, USER_SELECT, ROLE_SELECT, MENTIONABLE_SELECT, CHANNEL_SELECT = (
    1, 2, 3, 4, 5, 6, 7, 8)
SELECTS = (STRING_SELECT, USER_SELECT, ROLE_SELECT, MENTIONABLE_SELECT, CHANNEL_SELECT)
LINK_STYLE, PREMIUM_STYLE = 5, 6
MENTION_TYPES = ("users", "roles", "everyone")


@dataclass
class BodyRules:
    """What a route allows: the flags it may set (or, for an edit, the message's current flags) and the names
    of files the message will carry (uploads, plus kept attachments on an edit)."""

    filenames: Collection[str]
    allowed_flags: int = CHANNEL_MESSAGE_FLAGS
    edit_of_flags: int | None = None  # set for edits: only EDITABLE_FLAGS may be added


def check_body(errors: FormErrors, payload: dict[str, Any], rules: BodyRules) -> None:
    """Every message-body rule; problems go to ``errors`` (whose prefix places them, e.g. under ``data``)."""
    content = payload.get("content")
    if content is not None:
        errors.max_length(("content",), str(content), MAX_CONTENT)
    check_flags(errors, payload.get("flags"), rules)
    embeds = payload.get("embeds")
    if isinstance(embeds, list):
        check_embeds(errors, embeds, rules.filenames)
    components = payload.get("components")
    if isinstance(components, list):
        flags = payload.get("flags") if payload.get("flags") is not None else (rules.edit_of_flags or 0)
        check_components(errors, components, v2=bool(int(flags or 0) & IS_COMPONENTS_V2))
    mentions = payload.get("allowed_mentions")
    if isinstance(mentions, dict):
        check_allowed_mentions(errors, mentions)


def check_flags(errors: FormErrors, flags: Any, rules: BodyRules) -> None:
    if flags is None:
        return
    if isinstance(flags, bool) or not isinstance(flags, int):
        errors.add(("flags",), "NUMBER_TYPE_COERCE", f"Value \"{flags}\" is not int.")
        return
    if rules.edit_of_flags is not None:
        bad = flags & ~rules.edit_of_flags & ~EDITABLE_FLAGS  # a flag the message does not have already
    else:
        bad = flags & ~rules.allowed_flags
    if bad:
        errors.add(("flags",), "MESSAGE_FLAGS_INVALID", f"Invalid message flags: {bad} may not be set here")


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def check_embeds(errors: FormErrors, embeds: list[Any], filenames: Collection[str]) -> None:
    errors.max_length(("embeds",), embeds, MAX_EMBEDS)
    total = 0
    for index, embed in enumerate(embeds):
        here: Path = ("embeds", index)
        if not isinstance(embed, dict):
            errors.add(here, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            continue
        for path, limit in EMBED_TEXT_LIMITS:
            text = _get(embed, path)
            if text is not None:
                errors.max_length(here + path, str(text), limit)
                total += len(str(text))
        fields = embed.get("fields") or []
        errors.max_length(here + ("fields",), fields, MAX_EMBED_FIELDS)
        for number, field in enumerate(fields if isinstance(fields, list) else []):
            where = here + ("fields", number)
            if not isinstance(field, dict):
                errors.add(where, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
                continue
            errors.required(where + ("name",), field.get("name") is not None)
            errors.required(where + ("value",), field.get("value") is not None)
            errors.max_length(where + ("name",), str(field.get("name") or ""), MAX_FIELD_NAME)
            errors.max_length(where + ("value",), str(field.get("value") or ""), MAX_FIELD_VALUE)
            total += len(str(field.get("name") or "")) + len(str(field.get("value") or ""))
        for path in EMBED_URLS:
            url = _get(embed, path)
            if isinstance(url, str) and url.startswith("attachment://") and url[13:] not in filenames:
                errors.add(here + path, "EMBED_ATTACHMENT_NOT_FOUND",
                           f"{url} names no file of this message (have {sorted(filenames)})")
    if total > MAX_EMBEDS_TOTAL:
        errors.add(("embeds",), "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {MAX_EMBEDS_TOTAL}")


def check_components(errors: FormErrors, components: list[Any], *, v2: bool) -> None:
    """Action rows (or, with IS_COMPONENTS_V2, any layout up to 40 components) and the buttons/selects in them."""
    custom_ids: set[str] = set()
    if v2:
        count = _count_components(components)
        if count > MAX_V2_COMPONENTS:
            errors.add(("components",), "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_V2_COMPONENTS} or fewer in length.")
    else:
        errors.max_length(("components",), components, MAX_ACTION_ROWS)
    for index, row in enumerate(components):
        here: Path = ("components", index)
        if not isinstance(row, dict):
            errors.add(here, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            continue
        if row.get("type") != ACTION_ROW:
            if not v2:
                errors.add(here + ("type",), "UNION_TYPE_CHOICES",
                           "Value of field \"type\" must be one of (1,) at the top level of a message")
            else:
                _check_interactive(errors, here, row, custom_ids)
            continue
        items = row.get("components") or []
        if not items:
            errors.add(here + ("components",), "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length.")
        errors.max_length(here + ("components",), items, MAX_ROW_WIDTH)
        if any(isinstance(i, dict) and i.get("type") in SELECTS for i in items) and len(items) > 1:
            errors.add(here + ("components",), "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                       "The specified component exceeds the maximum width")
        for number, item in enumerate(items):
            where = here + ("components", number)
            if not isinstance(item, dict):
                errors.add(where, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            elif item.get("type") == ACTION_ROW:
                errors.add(where + ("type",), "UNION_TYPE_CHOICES", "An action row cannot contain an action row")
            else:
                _check_interactive(errors, where, item, custom_ids)


def _count_components(items: list[Any]) -> int:
    total = 0
    for item in items:
        if isinstance(item, dict):
            total += 1 + _count_components(item.get("components") or [])
            if isinstance(item.get("accessory"), dict):
                total += 1
    return total


def _check_interactive(errors: FormErrors, path: Path, item: dict[str, Any], custom_ids: set[str]) -> None:
    kind = item.get("type")
    custom_id = item.get("custom_id")
    if kind == BUTTON:
        style = item.get("style")
        if style == LINK_STYLE:
            if not item.get("url"):
                errors.add(path + ("url",), "BUTTON_COMPONENT_URL_REQUIRED", "A link button requires a url")
            if custom_id is not None:
                errors.add(path + ("custom_id",), "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                           "A link button cannot have a custom_id")
            errors.max_length(path + ("url",), item.get("url"), MAX_URL)
        elif style in (1, 2, 3, 4):
            if not custom_id:
                errors.add(path + ("custom_id",), "BUTTON_COMPONENT_CUSTOM_ID_REQUIRED",
                           "A custom id is required")
            if item.get("url") is not None:
                errors.add(path + ("url",), "BUTTON_COMPONENT_URL_NOT_ALLOWED", "Only link buttons have a url")
        elif style != PREMIUM_STYLE:
            errors.add(path + ("style",), "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4, 5, 6}.")
        errors.max_length(path + ("label",), item.get("label"), MAX_LABEL)
    elif kind in SELECTS:
        if not custom_id:
            errors.required(path + ("custom_id",), False)
        if kind == STRING_SELECT:
            options = item.get("options") or []
            if not options:
                errors.add(path + ("options",), "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length.")
            errors.max_length(path + ("options",), options, MAX_SELECT_OPTIONS)
    elif kind == TEXT_INPUT:
        errors.add(path + ("type",), "UNION_TYPE_CHOICES", "Text inputs are only allowed in modals")
    if isinstance(custom_id, str):
        if not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
            errors.length_between(path + ("custom_id",), custom_id, 1, MAX_CUSTOM_ID)
        if custom_id in custom_ids:
            errors.add(path + ("custom_id",), "COMPONENT_CUSTOM_ID_DUPLICATED",
                       "Component custom id cannot be duplicated")
        custom_ids.add(custom_id)
    for number, child in enumerate(item.get("components") or []):
        if isinstance(child, dict):
            _check_interactive(errors, path + ("components", number), child, custom_ids)
    if isinstance(item.get("accessory"), dict):
        _check_interactive(errors, path + ("accessory",), item["accessory"], custom_ids)


def check_allowed_mentions(errors: FormErrors, mentions: dict[str, Any]) -> None:
    parse = mentions.get("parse") or []
    for index, value in enumerate(parse):
        if value not in MENTION_TYPES:
            errors.add(("allowed_mentions", "parse", index), "BASE_TYPE_CHOICES",
                       f"Value must be one of {MENTION_TYPES}.")
    for kind in ("users", "roles"):
        ids = mentions.get(kind) or []
        errors.max_length(("allowed_mentions", kind), ids, MAX_MENTION_IDS)
        if kind in parse and ids:
            errors.add(("allowed_mentions",), "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                       f"parse:[\"{kind}\"] and {kind}: [ids...] are mutually exclusive.")
