"""/queue's answer stays within Discord's 2,000 characters however many jobs a member has."""

from __future__ import annotations

from bot.discord.cogs.jobs import queue_text
from bot.text import MESSAGE_CONTENT_LIMIT


def test_short_queue_is_shown_whole() -> None:
    lines = ["Jobs waiting: **2** (queue holds 50).", "• job `1`: Queued — position 1", "• job `2`: position 2"]
    assert queue_text(lines) == "\n".join(lines)


def test_long_queue_keeps_whole_lines_and_says_how_many_are_left_out() -> None:
    lines = ["Jobs waiting: **300** (queue holds 500)."] + [
        f"• job `{n}`: Queued — position {n}, about {n * 7} s" for n in range(1, 301)]
    text = queue_text(lines)
    assert len(text) <= MESSAGE_CONTENT_LIMIT
    shown = text.split("\n")
    assert shown[0] == lines[0] and shown[1:-1] == lines[1:len(shown) - 1]  # whole lines, in order
    assert shown[-1] == f"… and {len(lines) - (len(shown) - 1)} more"
