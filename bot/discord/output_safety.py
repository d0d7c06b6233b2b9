"""Output safety policy: how each generated image is posted once the checker (:mod:`generation.safety`) has
flagged it or not: ``block`` (withheld), ``spoiler`` (sent behind Discord's spoiler blur) or ``allow``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from bot.config import ContentFilterSettings
from bot.discord.formatting import SPOILER_PREFIX

Policy = Literal["block", "spoiler", "allow"]
Action = Literal["send", "spoiler", "withheld"]
POLICIES: tuple[str, ...] = get_args(Policy)
# Strictness order used to combine a host policy with a guild override: the stricter one wins.
_STRICTNESS = {"allow": 0, "spoiler": 1, "block": 2}


@dataclass(frozen=True)
class PolicyOutcome:
    """What to do with one image: ``send`` it, send it as a ``spoiler``, or keep it ``withheld``."""

    index: int
    action: Action
    png: bytes | None  # None when withheld, so a withheld image cannot be posted by mistake
    flagged: bool

    @property
    def is_spoiler(self) -> bool:
        return self.action == "spoiler"

    @property
    def withheld(self) -> bool:
        return self.action == "withheld"

    def filename(self, name: str) -> str:
        """The attachment filename: Discord blurs attachments whose name starts with ``SPOILER_``."""
        if self.is_spoiler and not name.startswith(SPOILER_PREFIX):
            return SPOILER_PREFIX + name
        return name


def apply_policy(pngs: Sequence[bytes], flags: Sequence[bool], policy: Policy) -> list[PolicyOutcome]:
    """Decide per image: unflagged images are always sent; flagged ones follow ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown safety policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if len(pngs) != len(flags):
        raise ValueError(f"got {len(pngs)} images but {len(flags)} safety flags")
    outcomes = []
    for index, (png, flagged) in enumerate(zip(pngs, flags, strict=True)):
        if not flagged or policy == "allow":
            outcomes.append(PolicyOutcome(index, "send", png, bool(flagged)))
        elif policy == "spoiler":
            outcomes.append(PolicyOutcome(index, "spoiler", png, True))
        else:
            outcomes.append(PolicyOutcome(index, "withheld", None, True))
    return outcomes


def policy_for(channel_is_nsfw: bool, settings: ContentFilterSettings, guild_override: Policy | None = None) -> Policy:
    """The policy for a channel: the host's setting for its kind, tightened (never loosened) by a guild override.

    The bot host answers for what the bot posts, so a server can choose to be stricter than the config
    (e.g. ``block`` in age-restricted channels too) but cannot relax it.
    """
    policy: Policy = settings.nsfw_channel_policy if channel_is_nsfw else settings.nsfw_policy
    if guild_override is None:
        return policy
    if guild_override not in POLICIES:
        raise ValueError(f"unknown safety policy {guild_override!r}; expected one of {', '.join(POLICIES)}")
    return guild_override if _STRICTNESS[guild_override] > _STRICTNESS[policy] else policy
