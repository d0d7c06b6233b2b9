"""The bot token never reaches a log line: message, arguments, extras, tracebacks, URLs; both formats."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bot.logging_setup import REDACTED, RedactingFilter, setup_logging
from tests.helpers import new_job

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


INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTpzZWNyZXQtcGFydC0wMTIzNDU2Nzg5"


async def test_interaction_tokens_in_aiosqlite_debug_lines_are_redacted(capture: io.StringIO, tmp_path) -> None:
    """aiosqlite logs every statement with its parameters at DEBUG: the journalled job's token among them."""
    from bot.storage.db import Database

    setup_logging("DEBUG", secrets=[TOKEN], stream=capture)
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}")
    try:
        await db.create_all()
        await new_job(db, interaction_token=INTERACTION_TOKEN, application_id=4)
    finally:
        await db.close()
    output = capture.getvalue()
    assert "INSERT INTO jobs" in output  # the statement was logged, with its parameters
    assert INTERACTION_TOKEN not in output and INTERACTION_TOKEN[:24] not in output
    assert REDACTED in output


def test_token_shapes_and_url_passwords_are_redacted_without_being_told(capture: io.StringIO) -> None:
    setup_logging("DEBUG", stream=capture)  # no secrets given
    log = logging.getLogger("some.library")
    log.debug("params %r", ("x", INTERACTION_TOKEN, 5))
    log.debug("token %s", TOKEN)
    log.info("connecting to %s", "postgresql+asyncpg://bot:hunter2hunter2@db:5432/imagine")
    log.info("module transformers.models.clip.modeling_clip_text_with_projection and version 1.2.3 are fine")
    output = capture.getvalue()
    for secret in (INTERACTION_TOKEN, TOKEN, "hunter2hunter2"):
        assert secret not in output
    assert "postgresql+asyncpg://bot:[REDACTED]@db:5432/imagine" in output
    assert "transformers.models.clip.modeling_clip_text_with_projection and version 1.2.3" in output


def test_libraries_with_their_own_handler_go_through_ours(capture: io.StringIO) -> None:
    """transformers and diffusers print through a stderr handler of their own, unredacted: adopt them."""
    library = logging.getLogger("diffusers")
    own = logging.StreamHandler(io.StringIO())
    library.addHandler(own)
    library.propagate = False
    try:
        setup_logging("INFO", stream=capture)
        logging.getLogger("diffusers.pipelines").warning("loading with token %s", TOKEN)
    finally:
        library.removeHandler(own)
        library.propagate = True
    assert own not in library.handlers and own.stream.getvalue() == ""
    assert "logger=diffusers.pipelines" in capture.getvalue() and TOKEN not in capture.getvalue()


def test_start_up_chatter_is_shown_at_debug_only(capture: io.StringIO, tmp_path) -> None:
    """A real Alembic upgrade: its plugin list and "Context impl" notes are noise at INFO; upgrades are not."""
    from bot.storage.db import run_alembic

    setup_logging("INFO", stream=capture)
    run_alembic(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", "upgrade", "head")
    logging.getLogger("transformers.utils.import_utils").warning(
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
    quiet = capture.getvalue()
    assert "Running upgrade" in quiet
    assert "Context impl" not in quiet and "setup plugin" not in quiet and "torchvision" not in quiet

    capture.seek(0)
    capture.truncate()
    setup_logging("DEBUG", stream=capture)
    run_alembic(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", "upgrade", "head")
    assert "Context impl" in capture.getvalue()
