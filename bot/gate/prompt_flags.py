"""Midjourney habits at the end of a prompt: ``--ar 16:9``, ``--no trees, cars``, ``--seed 5``, ``--steps 30``.

Members paste prompts from elsewhere with these flags; reading them as the options they stand for gives the member
what they meant instead of an image of the words "--ar 16:9". Only a trailing run is read: everything from the
first word that starts with ``--`` (or ``—``, what phones make of two dashes) to the end; the text before it is the
prompt. A flag nobody here understands is refused with the list of those that are, rather than drawn.

Pure and linear in the prompt's length (no regex), so it may run on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from generation.request import RequestError

FLAG_PREFIXES = ("--", "—")  # an em dash: phones autocorrect "--" into one
KNOWN_FLAGS = ("ar", "no", "seed", "steps")
ALIASES = {"aspect": "ar"}
_EXAMPLES = {"ar": "--ar 16:9", "no": "--no trees, cars", "seed": "--seed 5", "steps": "--steps 30"}


@dataclass(frozen=True)
class PromptFlags:
    """The prompt without its trailing flags, and what the flags asked for (None: not given)."""

    prompt: str
    aspect: str | None = None  # "16:9" as written; checked by bot.gate.aspect
    negative: str | None = None  # the words after --no
    seed: int | None = None
    steps: int | None = None


def _words(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each whitespace-separated word."""
    index, length = 0, len(text)
    while index < length:
        while index < length and text[index].isspace():
            index += 1
        if index >= length:
            return
        end = index
        while end < length and not text[end].isspace():
            end += 1
        yield index, end
        index = end


def _flag_name(word: str) -> str | None:
    """``ar`` for ``--ar`` / ``—ar``; None when the word is not a flag (``--`` alone, ``-1``, ``word--word``)."""
    for prefix in FLAG_PREFIXES:
        if word.startswith(prefix):
            name = word[len(prefix):].lower()
            if name[:1].isalpha():
                return name
    return None


def _whole_number(flag: str, value: str) -> int:
    if not value.isdigit():
        raise RequestError(f"--{flag} takes one whole number, like --{flag} 30 (got '{value}')")
    return int(value)


def parse_prompt_flags(text: str) -> PromptFlags:
    """Split ``text`` into the prompt and its trailing flags; :class:`RequestError` names a bad or unknown flag."""
    words = list(_words(text))
    first = next((i for i, (start, end) in enumerate(words) if _flag_name(text[start:end]) is not None), None)
    if first is None:
        return PromptFlags(prompt=text.strip())
    prompt = text[:words[first][0]].strip()
    groups: list[tuple[str, list[str]]] = []
    for start, end in words[first:]:
        word = text[start:end]
        name = _flag_name(word)
        if name is None:
            groups[-1][1].append(word)
        else:
            groups.append((ALIASES.get(name, name), []))
    found: dict[str, str] = {}
    for name, values in groups:
        if name not in KNOWN_FLAGS:
            known = ", ".join(f"--{flag}" for flag in KNOWN_FLAGS)
            raise RequestError(f"--{name} is not understood here; at the end of a prompt you can use {known}")
        if name in found:
            raise RequestError(f"--{name} is given twice at the end of the prompt; keep one")
        value = " ".join(values)
        if not value:
            raise RequestError(f"--{name} needs a value, like {_EXAMPLES[name]}")
        if name != "no" and len(values) > 1:
            raise RequestError(f"--{name} takes one value, like {_EXAMPLES[name]} (got '{value}'); "
                               "flags go at the very end of the prompt")
        found[name] = value
    return PromptFlags(
        prompt=prompt,
        aspect=found.get("ar"),
        negative=found.get("no"),
        seed=_whole_number("seed", found["seed"]) if "seed" in found else None,
        steps=_whole_number("steps", found["steps"]) if "steps" in found else None,
    )

