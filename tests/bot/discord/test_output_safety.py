"""Output safety: the policy decisions (with a fake checker) and the real diffusers loading path (tiny weights)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.config import ContentFilterSettings
from bot.discord.formatting import SPOILER_PREFIX
from bot.discord.output_safety import PolicyOutcome, apply_policy, policy_for
from generation.safety import OutputChecker


class RedChecker:
    """Fake checker at the edge: flags images whose top-left pixel is red."""

    def check(self, images: list[Image.Image]) -> list[bool]:
        return [image.convert("RGB").getpixel((0, 0)) == (255, 0, 0) for image in images]


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


PNGS = [_png("blue"), _png("red"), _png("green")]


def test_fake_checker_satisfies_the_protocol() -> None:
    assert isinstance(RedChecker(), OutputChecker)


@pytest.mark.parametrize(("policy", "actions"), [
    ("block", ["send", "withheld", "send"]),
    ("spoiler", ["send", "spoiler", "send"]),
    ("allow", ["send", "send", "send"]),
])
def test_apply_policy_with_fake_checker(policy: str, actions: list[str]) -> None:
    flags = RedChecker().check([Image.open(io.BytesIO(png)) for png in PNGS])
    assert flags == [False, True, False]
    outcomes = apply_policy(PNGS, flags, policy)  # type: ignore[arg-type]
    assert [o.action for o in outcomes] == actions
    assert [o.index for o in outcomes] == [0, 1, 2]
    assert [o.flagged for o in outcomes] == flags
    for outcome, png in zip(outcomes, PNGS, strict=True):
        assert outcome.png == (None if outcome.withheld else png)


@pytest.mark.parametrize(("action", "name", "expected"), [
    ("spoiler", "42_0.png", "SPOILER_42_0.png"),
    ("spoiler", "SPOILER_42_0.png", "SPOILER_42_0.png"),
    ("send", "42_0.png", "42_0.png"),
])
def test_outcome_filename(action: str, name: str, expected: str) -> None:
    outcome = PolicyOutcome(0, action, b"png", action != "send")  # type: ignore[arg-type]
    assert outcome.filename(name) == expected
    assert expected.startswith(SPOILER_PREFIX) == outcome.is_spoiler


def test_apply_policy_rejects_mismatch_and_unknown_policy() -> None:
    with pytest.raises(ValueError, match="2 images but 1 safety flags"):
        apply_policy(PNGS[:2], [False], "block")
    with pytest.raises(ValueError, match="unknown safety policy"):
        apply_policy(PNGS, [False] * 3, "hide")  # type: ignore[arg-type]
    assert apply_policy([], [], "block") == []


SETTINGS = ContentFilterSettings(nsfw_policy="block", nsfw_channel_policy="spoiler")
LOOSE = ContentFilterSettings(nsfw_policy="spoiler", nsfw_channel_policy="allow")


@pytest.mark.parametrize(("settings", "nsfw_channel", "override", "expected"), [
    (SETTINGS, False, None, "block"),
    (SETTINGS, True, None, "spoiler"),
    (SETTINGS, True, "block", "block"),  # a guild may tighten
    (SETTINGS, True, "allow", "spoiler"),  # but never loosen the host's setting
    (SETTINGS, False, "allow", "block"),
    (LOOSE, False, None, "spoiler"),
    (LOOSE, True, None, "allow"),
    (LOOSE, True, "spoiler", "spoiler"),
    (LOOSE, False, "block", "block"),
])
def test_policy_for(settings: ContentFilterSettings, nsfw_channel: bool, override: str | None, expected: str) -> None:
    assert policy_for(nsfw_channel, settings, override) == expected  # type: ignore[arg-type]


def test_policy_for_rejects_unknown_override() -> None:
    with pytest.raises(ValueError, match="unknown safety policy"):
        policy_for(True, SETTINGS, "maybe")  # type: ignore[arg-type]
