"""The page guards itself on every address it listens on: a wildcard ``playground.host`` keeps the Host (DNS
rebinding) and Origin checks, and listening beyond loopback is warned about. Real HTTP against the real page."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.localdiscord import LocalDiscordServer
from bot.playground.web import PlaygroundWeb, host_name, is_loopback

pytestmark = pytest.mark.timeout(60)


def outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if is_loopback(address) else address


@pytest.fixture
async def wildcard_page(caplog: pytest.LogCaptureFixture) -> AsyncIterator[PlaygroundWeb]:
    server = LocalDiscordServer(token="host-check-token-0123456789")
    await server.start()
    web = PlaygroundWeb(server)
    with caplog.at_level(logging.WARNING, logger="bot.playground.web"):
        await web.start("0.0.0.0", 0)
    try:
        yield web
    finally:
        await web.close()
        await server.close()


async def status(url: str, *, host: str | None = None, origin: str | None = None, post: bool = False) -> int:
    headers = {k: v for k, v in (("Host", host), ("Origin", origin)) if v is not None}
    async with aiohttp.ClientSession() as http:
        if post:
            body = {"member": "bob", "channel": "general", "text": "/nothing"}
            async with http.post(f"{url}api/command", json=body, headers=headers) as response:
                return response.status
        async with http.get(f"{url}api/state", headers=headers) as response:
            return response.status


async def test_a_wildcard_address_keeps_the_host_and_origin_checks(wildcard_page: PlaygroundWeb,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    url, port = wildcard_page.url, wildcard_page.port
    warned = " ".join(record.getMessage() for record in caplog.get_records("setup"))
    assert "beyond this machine" in warned and "127.0.0.1" in warned  # warned, with the fix
    # A rebound DNS name reaching the page through a wildcard address: refused.
    assert await status(url, host=f"evil.example:{port}") == 403
    assert await status(url, host="evil.example") == 403
    # This machine's own names are fine.
    assert await status(url) == 200
    assert await status(url, host=f"localhost:{port}") == 200
    assert await status(url, host=f"{socket.gethostname()}:{port}") == 200
    # Acting from another site's page: refused whatever the Host.
    assert await status(url, origin="http://evil.example", post=True) == 403
    assert await status(url, origin=url.rstrip("/"), post=True) == 400  # the page itself: the command is judged


async def test_the_address_a_visitor_connected_to_is_a_valid_host(wildcard_page: PlaygroundWeb) -> None:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no address beyond loopback")
    url = f"http://{address}:{wildcard_page.port}/"
    assert await status(url) == 200  # Host: <address>:<port>, as a browser on the LAN sends it
    assert await status(url, host=f"rebound.example:{wildcard_page.port}") == 403


async def test_loopback_only_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    server = LocalDiscordServer(token="host-check-token-0123456789")
    await server.start()
    web = PlaygroundWeb(server)
    try:
        with caplog.at_level(logging.WARNING, logger="bot.playground.web"):
            await web.start("127.0.0.1", 0)
        assert "beyond this machine" not in caplog.text
        assert await status(web.url, host=f"evil.example:{web.port}") == 403
    finally:
        await web.close()
        await server.close()


def test_host_names_and_loopback() -> None:
    assert host_name("[::1]:8765") == "::1" and host_name("LocalHost:80") == "localhost"
    assert host_name("[::1]") == "::1" and host_name("example.org") == "example.org"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5")
    assert not is_loopback("my-laptop.lan")
