"""Typed settings, one section class per concern, loaded from config.yaml.

A bad file never produces a traceback for the admin: :func:`load_settings` raises :class:`ConfigError`
whose message names the key, the value found and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from generation.dispatch.settings import QueueSettings
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


class ContentFilterSettings(_Section):
    blocked_terms: list[str] = Field(default_factory=list)
    regex_rules: list[str] = Field(default_factory=list)
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
    # Where batches run: in this process (local) or on `imagine-bot worker` processes through Redis (redis);
    # backend, redis_url, redis_prefix, lease_seconds, prefetch, max_attempts, max_result_mb (see QueueSettings).
    queue: QueueSettings = Field(default_factory=QueueSettings)
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


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against config.example.yaml)"
    value = error.get("input")
    shown = "missing" if error["type"] == "missing" else repr(value)
    return f"{key} = {shown}: {error['msg']}"


def settings_from_mapping(data: dict[str, Any] | None, *, source: str = "config",
                          environ: dict[str, str] | None = None) -> Settings:
    """Validate a mapping into :class:`Settings`, applying environment secrets (``DISCORD_TOKEN``)."""
    environ = os.environ if environ is None else environ
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (discord:, database:, ...)")
    if environ.get("DISCORD_TOKEN"):
        discord = dict(data.get("discord") or {})
        discord["token"] = environ["DISCORD_TOKEN"]
        data["discord"] = discord
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(e)}" for e in exc.errors())
        raise ConfigError(f"{source} has {len(exc.errors())} problem(s):\n{problems}\n"
                          "See config.example.yaml for every key with its meaning.") from None


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
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (discord:, database:, ...), "
                          f"got {type(data).__name__}.")
    return settings_from_mapping(data, source=str(path), environ=environ)
