"""Point discord.py at a configured REST base and gateway (the real Discord, or the local server).

discord.py has no constructor option for its endpoints, so the bot calls :func:`configure_endpoints` once at
start with ``settings.discord.api_base_url`` and ``settings.discord.gateway_url``. These are the only places
discord.py 2.x builds Discord URLs from:

* ``discord.http.Route.BASE`` -- every REST call of ``HTTPClient`` (login, ``/gateway/bot``, messages, command
  sync) is ``Route.BASE + path``. The webhook adapter in ``discord/webhook/async_.py`` imports the same ``Route``
  class, so interaction callbacks (``/interactions/{id}/{token}/callback``), followups
  (``/webhooks/{app}/{token}``) and original-response edits (``.../messages/@original``) honour it too; the
  hard-coded ``https://discord.com/api/webhooks/...`` in ``Webhook.url`` is only a display string.
* ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` -- a plain ``Client``/``commands.Bot`` connects there
  for IDENTIFY (it never asks ``/gateway/bot``), and falls back to it after an INVALID_SESSION. Resumes use
  READY's ``resume_gateway_url``, which the server sends, so nothing is needed for them. ``AutoShardedClient``
  takes its URL from ``GET /gateway/bot``, which goes through ``Route.BASE``.

The real defaults are exactly discord.py's own values, so for them this restores the library's originals
(a no-op in a fresh process; it also undoes an earlier call made by a test in the same process).
"""

from __future__ import annotations

import discord.gateway
import discord.http
import yarl

from bot.config import DISCORD_API, DISCORD_GATEWAY

_ORIGINAL_BASE: str = discord.http.Route.BASE
_ORIGINAL_GATEWAY: yarl.URL = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY

__all__ = ["configure_endpoints", "reset_endpoints", "current_endpoints"]


def _normalise_gateway(url: str) -> yarl.URL:
    """discord.py appends ``?v=10&encoding=json...`` with ``with_query``; an empty path must become ``/``."""
    parsed = yarl.URL(url)
    if parsed.scheme not in ("ws", "wss"):
        raise ValueError(f"gateway_url must start with ws:// or wss://, got {url!r}")
    if not parsed.path:
        parsed = parsed.with_path("/")
    return parsed.with_query(None).with_fragment(None)


def configure_endpoints(api_base_url: str, gateway_url: str) -> None:
    """Make discord.py send REST calls to ``api_base_url`` and connect its gateway to ``gateway_url``."""
    base = api_base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"api_base_url must start with http:// or https://, got {api_base_url!r}")
    gateway = _normalise_gateway(gateway_url)
    if base == DISCORD_API.rstrip("/") and gateway == _normalise_gateway(DISCORD_GATEWAY):
        reset_endpoints()
        return
    discord.http.Route.BASE = base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


def reset_endpoints() -> None:
    """Restore discord.py's own Discord endpoints (what it had at import time)."""
    discord.http.Route.BASE = _ORIGINAL_BASE
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = _ORIGINAL_GATEWAY


def current_endpoints() -> tuple[str, str]:
    """The REST base and gateway discord.py uses now, for logs and the startup banner."""
    return discord.http.Route.BASE, str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
