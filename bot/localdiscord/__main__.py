"""``python -m bot.localdiscord [port] [token]``: run the local Discord alone and print the two config values."""

from __future__ import annotations

import asyncio
import sys

from bot.localdiscord.server import LocalDiscordServer


async def run_forever(server: LocalDiscordServer) -> None:  # pragma: no cover - manual use
    """Keep the server up until the process is interrupted."""
    async with server:
        await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    port = int(argv[0]) if argv else 8766
    server = LocalDiscordServer(port=port, token=argv[1] if len(argv) > 1 else "local-bot-token")
    print(f"discord:\n  api_base_url: {server.api_base_url}\n  gateway_url: {server.gateway_url}", flush=True)
    asyncio.run(run_forever(server))


if __name__ == "__main__":
    main(sys.argv[1:])
