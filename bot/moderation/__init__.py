"""Moderation: the prompt content filter (before a job is queued) and the output safety policy (after)."""

from bot.moderation.filter import ContentFilter, FilterConfigError, FilterVerdict, normalise
from bot.moderation.safety import (
    OutputChecker,
    PolicyOutcome,
    SafetyCheckerLoadError,
    apply_policy,
    load_safety_checker,
    policy_for,
)

__all__ = [
    "ContentFilter",
    "FilterConfigError",
    "FilterVerdict",
    "OutputChecker",
    "PolicyOutcome",
    "SafetyCheckerLoadError",
    "apply_policy",
    "load_safety_checker",
    "normalise",
    "policy_for",
]
