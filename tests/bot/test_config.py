"""Config loading: every problem is reported as key, value and expectation, never as a traceback."""

from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, settings_from_mapping

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_documents_every_section() -> None:
    settings = load_settings(REPO / "config.example.yaml", environ={})
    text = (REPO / "config.example.yaml").read_text()
    for section, model in type(settings).model_fields.items():
        assert f"\n{section}:" in f"\n{text}", f"section {section} is not documented"
        for key, field in model.annotation.model_fields.items():
            assert f"  {field.alias or key}:" in text, f"{section}.{key} is not documented in config.example.yaml"


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, environ={})
    assert settings.database.url.startswith("sqlite+aiosqlite:///")
    assert settings.token is None


def test_environment_token_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("discord:\n  token: from-file\n")
    assert load_settings(path, environ={"DISCORD_TOKEN": "from-env"}).token == "from-env"
    assert load_settings(path, environ={}).token == "from-file"


def test_token_is_not_shown_in_repr() -> None:
    settings = settings_from_mapping({"discord": {"token": "very-secret-token"}}, environ={})
    assert "very-secret-token" not in repr(settings)
    assert "very-secret-token" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"generation": {"max_steps": "lots"}}, ["generation.max_steps", "'lots'", "integer"]),
        ({"generation": {"device": "tpu"}}, ["generation.device", "'tpu'", "'auto'"]),
        ({"rate_limits": {"images_per_window": -1}}, ["rate_limits.images_per_window", "-1", "greater than"]),
        ({"discord": {"toke": "x"}}, ["discord.toke", "unknown key"]),
        ({"generation": {"min_size": 300}}, ["min_size must be a multiple of 8"]),
        ({"generation": {"default_steps": 60}}, ["default_steps (60) must not exceed max_steps (50)"]),
        ({"content_filter": {"nsfw_policy": "maybe"}}, ["content_filter.nsfw_policy", "'maybe'", "'block'"]),
    ],
)
def test_bad_values_name_key_value_and_expectation(data: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(data, environ={})
    message = str(caught.value)
    for part in expected:
        assert part in message
    assert "Traceback" not in message


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Copy config.example.yaml"):
        load_settings(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize("text", ["discord: [unclosed", "- just\n- a list\n"])
def test_unreadable_yaml_is_one_clear_message(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        load_settings(path, environ={})


BOT_TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.Gx1y2z.abcdefghijklmnopqrstuvwxyz0123"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f"discord: {BOT_TOKEN}\n", "discord"),  # the token pasted as the section itself
        (f"discord:\n  guild_ids: {BOT_TOKEN}\n", "discord.guild_ids"),  # on the wrong key of its section
        (f"discord:\n  token: [{BOT_TOKEN}]\n", "discord.token"),
        ("database:\n  url: [postgresql+asyncpg://bot:hunter2hunter2@db/imagine]\n", "database.url"),
        ("database: postgresql+asyncpg://bot:hunter2hunter2@db/imagine\n", "database"),
        (f"logging:\n  level: {BOT_TOKEN}\n", "logging.level"),  # anywhere, a value shaped like a token
        (f"generation:\n  hf_token: {BOT_TOKEN}\n", "generation.hf_token"),  # an unknown key: never its value
        (f"{BOT_TOKEN}: 1\n", "(value not shown"),  # a token where a key belongs
    ],
)
def test_a_misplaced_secret_is_never_printed(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert BOT_TOKEN not in message and "hunter2hunter2" not in message
    assert "MTA5ODc2NTQzMjEwOTg3NjU0" not in message
    if not key.startswith("("):
        assert key in message  # the admin still learns where the problem is


def test_values_under_a_secret_key_are_hidden_even_when_harmless_looking() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"discord": {"progress_edit_seconds": "soon"}}, environ={})
    message = str(caught.value)
    assert "discord.progress_edit_seconds" in message and "soon" not in message and "secret" in message
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"generation": {"max_steps": "lots"}}, environ={})
    assert "'lots'" in str(caught.value)  # other sections keep showing the value found


def test_a_yaml_error_on_the_token_line_does_not_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"discord:\n  token: {BOT_TOKEN}: oops\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert "line 2" in message and BOT_TOKEN not in message and "MTA5ODc2" not in message


def test_environment_token_with_a_misplaced_section_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"discord": "pasted-here-by-mistake-0123456789"}, environ={"DISCORD_TOKEN": BOT_TOKEN})
    message = str(caught.value)
    assert "discord" in message and "pasted-here" not in message and BOT_TOKEN not in message
