"""The playground in a REAL headless browser (Debian's Chromium through Playwright): type a prompt, submit
/imagine, see the acknowledgement only the member can see, the image load, then 🔄 for a second image, the
Upscale button for a bigger one, and an uploaded picture to start from.

The bot is the real one, connected to the local Discord server; the page talks to it over HTTP and a
WebSocket. A screenshot is saved to ``$IMAGINE_ARTIFACTS_DIR`` (else a pytest temp dir) and its path printed.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import settings_from_mapping
from bot.playground import start_playground

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium "
                       "(scripts/test does it: apt-get install chromium)"),
]
playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed "
                                     "(pip install -e '.[dev]')")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PUBLIC_IMAGES = ".message[data-ephemeral='0'] img.attachment-img"
LOADED_IMAGES_AT_LEAST = f"""(n) => [...document.querySelectorAll("{PUBLIC_IMAGES}")]
    .filter((img) => img.complete && img.naturalWidth > 0).length >= n"""


def start_png() -> bytes:
    """A picture to upload: a gradient, so it is not blank."""
    image = Image.linear_gradient("L").resize((320, 192)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("IMAGINE_ARTIFACTS_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("playground-artifacts")


async def test_imagine_then_rerun_in_a_real_browser(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                   playground_tiny_model: Any, capsys: pytest.CaptureFixture[str],
                                                   ) -> None:
    started = time.monotonic()
    settings = settings_from_mapping({"generation": {"model": "tiny", "device": "cpu"}}, environ={})
    playground = await start_playground(settings, port=0, data_dir=tmp_path / "data", model=playground_tiny_model)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    errors: list[str] = []
    try:
        async with playwright_api.async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1400, "height": 900})
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(playground.url)
                await page.wait_for_selector("#conn-status[data-state='open']", timeout=15_000)
                await page.wait_for_selector("#channels .channel[data-name='general'].active")
                assert "tiny" in await page.inner_text("[data-testid='banner-info']")  # how to get real images

                # /imagine from the form: prompt, and steps=4 in the options to keep it quick.
                await page.fill("#imagine-prompt", "a lighthouse in a storm, oil painting")
                await page.click("#options-toggle")
                await page.fill("#opt-steps", "4")
                await page.fill("#opt-seed", "42")
                await page.click("#imagine-submit")

                # The acknowledgement is ephemeral: shown to alice (the default member) only.
                ack = page.locator(".message.ephemeral").first
                await ack.wait_for(timeout=10_000)
                assert "Only you can see this" in await ack.inner_text()
                assert "used /imagine" in await ack.locator(".reply-line").inner_text()

                await page.wait_for_function(LOADED_IMAGES_AT_LEAST, arg=1, timeout=60_000)
                result = page.locator(".message[data-ephemeral='0']", has=page.locator("img.attachment-img")).first
                assert "Seed" in await result.inner_text() and "42" in await result.inner_text()

                # 🔄 on the result (the reaction the bot put there) reruns it: a second image arrives.
                await result.locator(".reaction[data-emoji='🔄']").click()
                await page.wait_for_function(LOADED_IMAGES_AT_LEAST, arg=2, timeout=60_000)
                widths = await page.eval_on_selector_all(PUBLIC_IMAGES, "imgs => imgs.map((i) => i.naturalWidth)")
                assert len(widths) >= 2 and all(w == 256 for w in widths)

                # The result's buttons render and click: Upscale gives the image at twice the size.
                await result.locator("button.btn", has_text="Upscale").click()
                await page.wait_for_function(LOADED_IMAGES_AT_LEAST, arg=3, timeout=60_000)
                widths = await page.eval_on_selector_all(PUBLIC_IMAGES, "imgs => imgs.map((i) => i.naturalWidth)")
                assert 512 in widths

                # A picture to start from, through the form's file picker, with a strength (img2img).
                await page.set_input_files("#opt-image", files=[{"name": "start.png", "mimeType": "image/png",
                                                                 "buffer": start_png()}])
                await page.fill("#opt-strength", "0.5")
                await page.click("#imagine-submit")
                await page.wait_for_function(LOADED_IMAGES_AT_LEAST, arg=4, timeout=60_000)
                newest = page.locator(".message[data-ephemeral='0']", has=page.locator("img.attachment-img")).last
                assert "Strength" in await newest.inner_text() and "0.5" in await newest.inner_text()
                await page.set_input_files("#opt-image", files=[])

                await page.click("#options-toggle")  # fold the options: more of the channel in the picture
                await page.mouse.move(700, 20)  # no hover toolbar in the picture
                screenshot = artifacts_dir(tmp_path_factory) / "playground.png"
                await page.screenshot(path=str(screenshot))
                with capsys.disabled():
                    print(f"\nplayground screenshot: {screenshot}")

                # Another member does not see alice's ephemeral messages.
                await page.select_option("#member-picker", label="bob")
                await page.wait_for_function("() => !document.querySelector('.message.ephemeral')", timeout=5_000)
                assert await page.locator(PUBLIC_IMAGES).count() >= 2
            finally:
                await context.close()
    finally:
        await playground.close()
        shutil.rmtree(profile, ignore_errors=True)
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert time.monotonic() - started < 90
