"""The playground's web API without a browser: a command POSTed as a member reaches the REAL bot through the
local Discord server, and the bot's messages come back on the page's WebSocket (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import settings_from_mapping
from bot.localdiscord import LOADING
from bot.playground import start_playground

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def next_event(ws: aiohttp.ClientWebSocketResponse, predicate: Callable[[dict[str, Any]], Any],
                     timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
    """The next WebSocket event matching ``predicate`` (earlier ones are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the page's WebSocket ended: {msg}"
            event = json.loads(msg.data)
            if predicate(event):
                return event


def of_interaction(interaction_id: str) -> Callable[[dict[str, Any]], bool]:
    def check(event: dict[str, Any]) -> bool:
        message = event.get("message") or {}
        return event["type"] in ("message_create", "message_update") and message.get("interaction_id") == interaction_id
    return check


async def test_a_posted_command_comes_back_as_the_bots_message_on_the_websocket(
        tmp_path: Path, playground_tiny_model: Any) -> None:
    settings = settings_from_mapping({
        "generation": {"model": "tiny", "device": "cpu"},
        "rate_limits": {"images_per_window": 1, "window_seconds": 3600},
    }, environ={})
    playground = await start_playground(settings, port=0, data_dir=tmp_path, model=playground_tiny_model)
    base = playground.url.rstrip("/")
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/ws") as ws:
            state = await next_event(ws, lambda e: True, timeout=10)
            assert state["type"] == "state"
            assert [c["name"] for c in state["channels"]] == ["general", "art", "nsfw-art"]
            members = {m["username"]: m for m in state["members"]}
            assert members["alice"]["admin"] and not members["bob"]["admin"]
            assert "imagine" in {c["name"] for c in state["commands"]}
            assert state["info"]["model"] == "tiny" and state["info"]["note"]  # the "how to get real images" note
            assert state["info"]["defaults"]["width"] == 256  # tiny's lighter default, not configured
            bob, bot_id = members["bob"]["id"], state["bot"]["id"]

            # The page's /imagine: text parsed against the synced definition, typed options.
            response = await http.post(f"{base}/api/command", json={
                "member": "bob", "channel": "general", "text": "/imagine prompt:a red cube seed:7 steps:2"})
            body = await response.json()
            assert response.status == 200, body
            assert body["options"] == {"prompt": "a red cube", "seed": 7, "steps": 2}
            interaction_id = body["interaction_id"]

            # First the acknowledgement: the bot's ephemeral "thinking" message, for bob's eyes only.
            thinking = (await next_event(ws, of_interaction(interaction_id)))["message"]
            assert thinking["author"]["id"] == bot_id
            assert thinking["ephemeral"] and thinking["visible_to"] == bob

            # Then the public result, whose PNG the page loads from its own origin.
            result = (await next_event(ws, lambda e: e["type"] in ("message_create", "message_update")
                                       and not e["message"]["ephemeral"] and e["message"]["attachments"]))["message"]
            assert result["author"]["id"] == bot_id and f"<@{bob}>" in result["content"]
            url = result["attachments"][0]["url"]
            assert url.startswith("/attachments/")
            async with http.get(base + url) as image:
                assert image.status == 200 and image.content_type == "image/png"
                assert (await image.read())[:8] == PNG_MAGIC
            custom_ids = [c["custom_id"] for row in result["components"] for c in row["components"]]
            assert any(cid.startswith("imagine:rerun:") for cid in custom_ids)

            # The configured limit (1 image per hour) applies: bob's next request is refused, privately.
            response = await http.post(f"{base}/api/command", json={
                "member": "bob", "channel": "general", "name": "imagine", "options": {"prompt": "again", "steps": "2"}})
            second = (await response.json())["interaction_id"]
            refusal = (await next_event(ws, lambda e: of_interaction(second)(e)
                                        and not e["message"]["flags"] & LOADING))["message"]
            assert refusal["ephemeral"] and refusal["visible_to"] == bob
            assert "per hour" in refusal["content"]  # the rate limiter's refusal

            # Buttons act as the member who clicks: carol may not delete bob's image, bob may.
            delete = next(cid for cid in custom_ids if cid.startswith("imagine:delete:"))
            response = await http.post(f"{base}/api/button", json={
                "member": "carol", "message_id": result["id"], "custom_id": delete})
            carols = (await response.json())["interaction_id"]
            denied = (await next_event(ws, lambda e: of_interaction(carols)(e)
                                       and not e["message"]["flags"] & LOADING))["message"]
            assert denied["ephemeral"] and "Only the member who asked" in denied["content"]
            response = await http.post(f"{base}/api/button", json={
                "member": "bob", "message_id": result["id"], "custom_id": delete})
            assert response.status == 200
            await next_event(ws, lambda e: e["type"] == "message_delete" and e["id"] == result["id"])

        # What Discord's client would refuse is explained, not sent.
        async with aiohttp.ClientSession() as http:
            for payload, expected in [
                ({"member": "mallory", "channel": "general", "text": "/queue"}, "no member 'mallory'"),
                ({"member": "bob", "channel": "general", "text": "/imagine a cat steps:999"}, "steps"),
                ({"member": "bob", "channel": "general", "text": "/paint a cat"}, "unknown command /paint"),
                ({"member": "bob", "channel": "lobby", "text": "/queue"}, "no channel #lobby"),
            ]:
                async with http.post(f"{base}/api/command", json=payload) as response:
                    assert response.status == 400
                    assert expected in (await response.json())["error"]
            async with http.get(f"{base}/attachments/1/nope.png") as response:
                assert response.status == 404
            # Only the page itself may act: another web site (Origin) or a rebound DNS name (Host) may not.
            queue = {"member": "bob", "channel": "general", "text": "/queue"}
            async with http.post(f"{base}/api/command", json=queue, headers={"Origin": "http://evil.example"}) as r:
                assert r.status == 403
            async with http.get(f"{base}/api/state", headers={"Host": "evil.example"}) as r:
                assert r.status == 403
            async with http.post(f"{base}/api/command", json=queue, headers={"Origin": base}) as r:
                assert r.status == 200
    finally:
        await playground.close()
