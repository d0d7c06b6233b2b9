"""Interaction callbacks: which response types fit which interaction, and what their ``data`` may hold.

https://discord.com/developers/docs/interactions/receiving-and-responding#responding-to-an-interaction:
DEFERRED_UPDATE_MESSAGE (6) and UPDATE_MESSAGE (7) are only valid for component interactions (and modal
submits coming from a component's message); APPLICATION_COMMAND_AUTOCOMPLETE_RESULT (8) only answers
autocomplete; MODAL (9) is not available for a modal submit (nor, like everything else, for autocomplete);
PONG (1) only answers PING, which a gateway bot never gets. Message data may set only EPHEMERAL,
SUPPRESS_EMBEDS, SUPPRESS_NOTIFICATIONS and IS_COMPONENTS_V2. OpenAPI ``ModalInteractionCallbackRequestData``
and the docs: a modal has a custom_id of 1-100, a title of 1-45 and 1-5 components; autocomplete answers
up to 25 choices. An interaction gets exactly one callback (else 400 code 40060).
"""

from __future__ import annotations

from typing import Any

from bot.localdiscord.errors import DiscordError
from bot.localdiscord.rules.commands import MAX_CHOICE_NAME, MAX_CHOICE_STRING, MAX_CHOICES
from bot.localdiscord.rules.form import FormErrors

PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE_RESULT, MODAL = (
    1, 4, 5, 6, 7, 8, 9)
APPLICATION_COMMAND, MESSAGE_COMPONENT, APPLICATION_COMMAND_AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5

ALLOWED_CALLBACKS: dict[int, tuple[int, ...]] = {
    APPLICATION_COMMAND: (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL),
    MESSAGE_COMPONENT: (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL),
    APPLICATION_COMMAND_AUTOCOMPLETE: (AUTOCOMPLETE_RESULT,),
    MODAL_SUBMIT: (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE),
}
KNOWN_CALLBACKS = (PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE,
                   AUTOCOMPLETE_RESULT, MODAL)
MAX_MODAL_TITLE = 45
MAX_MODAL_ROWS = 5


def already_acknowledged() -> DiscordError:
    return DiscordError(400, 40060, "Interaction has already been acknowledged.")


def check_callback_type(kind: Any, interaction_type: int, *, has_message: bool) -> None:
    """The callback ``type`` must exist and fit the interaction (6/7 need a message to update)."""
    errors = FormErrors()
    if kind not in KNOWN_CALLBACKS:
        errors.add(("type",), "BASE_TYPE_CHOICES", f"Value must be one of {KNOWN_CALLBACKS}.")
    else:
        allowed = ALLOWED_CALLBACKS.get(interaction_type, ())
        if kind in (DEFERRED_UPDATE, UPDATE_MESSAGE) and not has_message:
            allowed = tuple(k for k in allowed if k not in (DEFERRED_UPDATE, UPDATE_MESSAGE))
        if kind not in allowed:
            errors.add(("type",), "INTERACTION_CALLBACK_TYPE_INVALID",
                       f"Callback type {kind} is not valid for interaction type {interaction_type}; "
                       f"valid: {allowed}")
    errors.raise_if_any()


def check_modal(data: dict[str, Any]) -> None:
    errors = FormErrors(("data",))
    errors.length_between(("custom_id",), data.get("custom_id"), 1, 100)
    errors.length_between(("title",), data.get("title"), 1, MAX_MODAL_TITLE)
    components = data.get("components") or []
    if not components:
        errors.add(("components",), "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length.")
    errors.max_length(("components",), components, MAX_MODAL_ROWS)
    errors.raise_if_any()


def check_autocomplete(data: dict[str, Any]) -> None:
    errors = FormErrors(("data",))
    choices = data.get("choices") or []
    errors.max_length(("choices",), choices, MAX_CHOICES)
    for index, choice in enumerate(choices):
        if not isinstance(choice, dict):
            errors.add(("choices", index), "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            continue
        errors.length_between(("choices", index, "name"), choice.get("name"), 1, MAX_CHOICE_NAME)
        if isinstance(choice.get("value"), str):
            errors.max_length(("choices", index, "value"), choice["value"], MAX_CHOICE_STRING)
    errors.raise_if_any()
