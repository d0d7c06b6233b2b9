"""The bot token never reaches a log line: message, arguments, extras, tracebacks, URLs; both formats."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bot.logging_setup import REDACTED, RedactingFilter, setup_logging

TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.Gx1y2z.abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture
def capture():
    stream = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    yield stream
    from bot import logging_setup

    if logging_setup._installed is not None:
        root.removeHandler(logging_setup._installed)
        logging_setup._installed = None
    root.setLevel(old_level)


@pytest.mark.parametrize("json_lines", [False, True])
def test_token_is_redacted_everywhere(capture: io.StringIO, json_lines: bool) -> None:
    setup_logging("DEBUG", json_lines=json_lines, secrets=[TOKEN], stream=capture)
    log = logging.getLogger("test.redaction")
    log.info("login with %s", TOKEN)
    log.warning(f"plain f-string {TOKEN}")
    log.info("extra field", extra={"header": f"Bot {TOKEN}"})
    try:
        raise RuntimeError(f"failed for token {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    log.debug("POST /api/v10/webhooks/123456/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OQ/messages/@original")
    output = capture.getvalue()
    assert TOKEN not in output
    assert "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OQ" not in output
    assert output.count(REDACTED) >= 5
    lines = output.strip().splitlines() if json_lines else None
    if json_lines:
        assert all(json.loads(line)["logger"] == "test.redaction" for line in lines)


def test_key_value_format_is_one_line_with_extras(capture: io.StringIO) -> None:
    setup_logging("INFO", secrets=[None], stream=capture)
    logging.getLogger("bot.test").info("result posted", extra={"job": 12, "prompt": "a red cube"})
    line = capture.getvalue().strip()
    assert "\n" not in line
    assert 'level=INFO logger=bot.test msg="result posted" job=12 prompt="a red cube"' in line


def test_filter_ignores_short_secrets_and_keeps_other_text() -> None:
    redactor = RedactingFilter(["abc", None, ""])
    assert redactor.redact("abc is fine") == "abc is fine"
    redactor.add_secret("supersecretvalue")
    assert redactor.redact("x supersecretvalue y") == f"x {REDACTED} y"
