"""Typed settings, one section class per concern, loaded from config.yaml.

A bad file never produces a traceback for the admin: :func:`load_settings` raises :class:`ConfigError`
whose message names the key, the value found and what was expected. The value is left out where it may be a
secret (anything under ``discord:``, a key named like a token or password, a URL with a password, anything
shaped like a token): config errors end up in terminals, logs and bug reports.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import PydanticCustomError

from bot.bounded_regex import RegexRuleError, compile_rule
from bot.redaction import looks_secret, redact_token_shapes
from generation.settings import GenerationSettings

DISCORD_API = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiscordSettings(_Section):
    token: SecretStr | None = Field(None, description="bot token; the DISCORD_TOKEN environment variable wins")
    api_base_url: str = DISCORD_API
    gateway_url: str = DISCORD_GATEWAY
    guild_ids: list[int] = Field(default_factory=list, description="sync commands to these guilds at once")
    sharded: bool = False
    shard_count: int | None = Field(None, ge=1)
    progress_edit_seconds: float = Field(2.0, ge=0.0, description="edit progress messages at most this often")
    attachment_size_limit: int = Field(10 * 1024 * 1024, ge=1024)


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///data/imagine.db"
    auto_upgrade: bool = Field(True, description="run Alembic migrations to head at start")


class StorageSettings(_Section):
    images_dir: Path = Path("data/images")


class LimitOverride(_Section):
    images_per_window: int | None = Field(None, ge=0)
    window_seconds: int | None = Field(None, ge=1)
    max_queued_per_user: int | None = Field(None, ge=0)


class RateLimitSettings(_Section):
    images_per_window: int = Field(20, ge=0)
    window_seconds: int = Field(3600, ge=1)
    max_queued_per_user: int = Field(3, ge=0)
    guild_overrides: dict[int, LimitOverride] = Field(default_factory=dict)
    role_overrides: dict[int, LimitOverride] = Field(default_factory=dict)
    max_queue_share_per_guild: float = Field(
        1.0, gt=0.0, le=1.0,
        description="the largest share of generation.queue_size one server's queued and running jobs may take")


def _bounded_regex(pattern: str) -> str:
    """Refuse at load a regex rule that RE2 cannot run in linear time (the filter compiles it the same way)."""
    try:
        compile_rule(pattern)
    except RegexRuleError as exc:
        raise PydanticCustomError("regex_rule", str(exc)) from None
    return pattern


class ContentFilterSettings(_Section):
    blocked_terms: list[str] = Field(default_factory=list)
    regex_rules: list[Annotated[str, AfterValidator(_bounded_regex)]] = Field(default_factory=list)
    negative_prompt_terms: list[str] = Field(default_factory=list, description="the only terms a negative prompt "
                                             "is checked for: 'nsfw' there keeps such content out")
    default_rules: bool = Field(True, description="the shipped rules (bot/gate/default_rules.yaml); /settings can "
                                "choose per server")
    co_occurrence_rules: list[list[list[str]]] = Field(
        default_factory=list, description="refuse a prompt with a term from every list of a rule")
    nsfw_policy: Literal["block", "spoiler", "allow"] = "block"
    nsfw_channel_policy: Literal["block", "spoiler", "allow"] = "spoiler"


class PlaygroundSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(False, alias="json")


class Settings(_Section):
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    content_filter: ContentFilterSettings = Field(default_factory=ContentFilterSettings)
    playground: PlaygroundSettings = Field(default_factory=PlaygroundSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @property
    def token(self) -> str | None:
        """The bot token, or None when none is configured."""
        return self.discord.token.get_secret_value() if self.discord.token else None


class ConfigError(Exception):
    """A config problem explained for a server admin (key, value, what is expected)."""


# Key names whose values are, or may be, secrets.
_SECRET_KEY = re.compile(r"token|password|passwd|secret|credential|api_?key|auth", re.IGNORECASE)
HIDDEN = "(value not shown: it may be a secret)"


def _may_hold_secret(loc: tuple[Any, ...], value: Any) -> bool:
    """Whether the value at ``loc`` must not be printed: a secret's section or name, or a secret's shape."""
    if loc and loc[0] == "discord":
        return True  # the token's section: a misplaced token (``discord: <token>``) lands on some key here
    if any(_SECRET_KEY.search(str(part)) for part in loc):
        return True
    if isinstance(value, dict):
        return any(_may_hold_secret((*loc, key), item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_may_hold_secret(loc, item) for item in value)
    return isinstance(value, str) and looks_secret(value)


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against config.example.yaml)"
    value = error.get("input")
    if error["type"] == "missing":
        shown = "missing"
    elif _may_hold_secret(loc, value):
        shown = HIDDEN
    else:
        shown = repr(value)
    return f"{key} = {shown}: {error['msg']}"


def settings_from_mapping(data: dict[str, Any] | None, *, source: str = "config",
                          environ: dict[str, str] | None = None) -> Settings:
    """Validate a mapping into :class:`Settings`, applying environment secrets (``DISCORD_TOKEN``)."""
    environ = os.environ if environ is None else environ
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (discord:, database:, ...)")
    data = dict(data or {})
    discord = data.get("discord")
    if environ.get("DISCORD_TOKEN") and (discord is None or isinstance(discord, dict)):
        data["discord"] = {**(discord or {}), "token": environ["DISCORD_TOKEN"]}
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(e)}" for e in exc.errors())
        # Key names are shown; a token pasted where a key belongs is hidden all the same.
        raise ConfigError(redact_token_shapes(f"{source} has {len(exc.errors())} problem(s):\n{problems}\n"
                                              "See config.example.yaml for every key with its meaning.")) from None


def load_settings(path: str | Path | None, *, environ: dict[str, str] | None = None) -> Settings:
    """Read and validate config.yaml; a missing path (None) means all defaults."""
    if path is None:
        return settings_from_mapping({}, source="defaults", environ=environ)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file. Copy config.example.yaml to {path} and edit it.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Not str(exc): it quotes the offending line, which may be the one holding the token.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML{where} ({problem}). Check the indentation and quoting "
                          "there.") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (discord:, database:, ...), "
                          f"got {type(data).__name__}.")
    return settings_from_mapping(data, source=str(path), environ=environ)
