"""The local server's knobs, shared by all its parts (tests change some of them while it runs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerSettings:
    """``port`` 0 picks a free port at start (read back here). ``ack_deadline_seconds``,
    ``token_ttl_seconds`` and ``privileged_intents`` may be changed at run time."""

    token: str = "local-bot-token"
    host: str = "127.0.0.1"
    port: int = 0
    token_ttl_seconds: float = 15 * 60
    ack_deadline_seconds: float = 3.0
    heartbeat_interval_ms: int = 41250
    attachment_size_limit: int = 10 * 1024 * 1024  # a file (a server without boosts)
    request_size_limit: int = 25 * 1024 * 1024  # all files of one request
    privileged_intents: int = 0  # GUILD_MEMBERS / GUILD_PRESENCES / MESSAGE_CONTENT enabled for the app

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base_url(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"
