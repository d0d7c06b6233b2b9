"""Regex rules from the config, compiled with RE2 so that no pattern can stall the bot.

Python's ``re`` backtracks: a rule such as ``(a+)+$`` takes exponential time on a long prompt. RE2 (Google's
linear-time engine, ``google-re2`` on PyPI) matches in time linear in the prompt and bounds its memory, and it
refuses at compile time what it cannot run that way (backreferences, lookarounds, huge repetitions). The config
loader and :class:`bot.gate.content_filter.ContentFilter` both compile through here, so a pattern that RE2 cannot
handle is refused when the config is loaded, with one sentence naming it.

RE2's ``\\b``, ``\\w`` and ``\\d`` are ASCII-only; the filter matches rules against prompts whose look-alike letters
are already mapped to ASCII, so that is what a rule needs.
"""

from __future__ import annotations

import re
from typing import Protocol

import re2

__all__ = ["BoundedPattern", "RegexRuleError", "compile_rule"]

# RE2's own default budget for a compiled program; a pattern that needs more is refused rather than truncated.
MAX_PROGRAM_BYTES = 8 << 20


class BoundedPattern(Protocol):
    """What the filter uses of a compiled RE2 pattern."""

    def search(self, text: str) -> object | None: ...


class RegexRuleError(ValueError):
    """RE2 cannot compile the pattern; the message says why and what to do, in one sentence."""


def compile_rule(pattern: str) -> BoundedPattern:
    """Compile ``pattern`` case-insensitively with RE2, or raise :class:`RegexRuleError` saying why.

    The message does not repeat the pattern: the caller names the setting and shows the value.
    """
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # RE2 would print its own error to stderr; ours is raised instead
    options.max_mem = MAX_PROGRAM_BYTES
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
    try:
        re.compile(pattern)  # only to tell a typo from a construct RE2 refuses; never matched with `re`
    except re.error as exc:
        raise RegexRuleError(f"not a valid regular expression ({exc}).") from None
    raise RegexRuleError(
        f"RE2, the linear-time engine regex rules run on, cannot run it ({reason}); rewrite it without "
        "backreferences, lookarounds or huge repetition counts."
    )
