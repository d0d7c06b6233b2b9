"""Styles with LoRAs on the real ``tiny`` pipeline, with LoRA files the tests make (tests/generation/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.engine import DiffusionEngine
from generation.errors import JobRefusedError
from generation.loading import load_pipeline
from generation.png import parse_parameters, read_parameters
from generation.request import GenerationRequest, validate_request
from generation.settings import GenerationSettings, LoraSettings, StyleSettings
from generation.worker import GenerationWorker

pytestmark = pytest.mark.timeout(300)
MAX_PIXEL_DIFF = 2
MAX_MEAN_DIFF = 0.05


@pytest.fixture(scope="module")
def settings(tiny_lora: Path, other_tiny_lora: Path, tmp_path_factory: pytest.TempPathFactory) -> GenerationSettings:
    missing = tmp_path_factory.mktemp("no-lora") / "absent.safetensors"
    return GenerationSettings(
        model="tiny", device="cpu", min_size=64, default_width=64, default_height=64, default_steps=3,
        styles={
            "lora-only": StyleSettings(loras=[LoraSettings(path=str(tiny_lora), name="look")]),
            "half": StyleSettings(loras=[LoraSettings(path=str(tiny_lora), name="look", weight=0.5)]),
            "mixed": StyleSettings(prompt="{prompt}, film grain", negative="digital",
                                   loras=[LoraSettings(path=str(tiny_lora), name="look", weight=0.7),
                                          LoraSettings(path=str(other_tiny_lora), name="grain", weight=1.0)]),
            "broken": StyleSettings(loras=[LoraSettings(path=str(missing))]),
        },
    )


@pytest.fixture(scope="module")
def engine(settings: GenerationSettings) -> DiffusionEngine:
    return DiffusionEngine(load_pipeline(settings), settings)


def job(settings: GenerationSettings, style: str | None = None, prompt: str = "a red cat", seed: int = 42,
        requester: str = "u1") -> GenerationRequest:
    return validate_request(settings, prompt=prompt, seed=seed, style=style, requester_id=requester)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_same(a: Image.Image, b: Image.Image) -> None:
    d = np.abs(pixels(a) - pixels(b))
    assert d.max() <= MAX_PIXEL_DIFF and d.mean() < MAX_MEAN_DIFF, (d.max(), d.mean())


def test_a_lora_style_changes_the_image_reproducibly_and_switches_off_again(
        engine: DiffusionEngine, settings: GenerationSettings) -> None:
    plain = engine.generate([job(settings)])[0][0]
    styled = engine.generate([job(settings, "lora-only")])[0][0]
    assert job(settings, "lora-only").params.prompt == job(settings).params.prompt  # only the LoRA differs
    assert np.abs(pixels(plain) - pixels(styled)).mean() > 1
    assert_same(plain, engine.generate([job(settings)])[0][0])  # adapters off for a batch without a style
    assert_same(styled, engine.generate([job(settings, "lora-only")])[0][0])
    half = engine.generate([job(settings, "half")])[0][0]
    assert np.abs(pixels(half) - pixels(styled)).mean() > 0.5  # the weight is applied per batch
    assert engine.models.get("").adapters == {"look": settings.lora_paths()["look"]}  # loaded once, reused


def test_same_style_from_two_members_batched_equals_alone(engine: DiffusionEngine,
                                                          settings: GenerationSettings) -> None:
    alone = engine.generate([job(settings, "mixed")])[0][0]
    batch = engine.generate([job(settings, "mixed", "a blue dog", seed=7, requester="u2"), job(settings, "mixed")])
    assert_same(alone, batch[1][0])
    keys = {engine.batch_key(job(settings, style)) for style in (None, "lora-only", "half", "mixed")}
    assert len(keys) == 4  # adapters and their weights are part of the key


def test_a_style_whose_lora_cannot_load_refuses_its_batch_only(engine: DiffusionEngine,
                                                               settings: GenerationSettings) -> None:
    with pytest.raises(JobRefusedError, match="^The style's LoRA 'absent' could not be loaded"):
        engine.generate([job(settings, "broken")])
    assert len(engine.generate([job(settings, "lora-only")])[0]) == 1


async def test_the_png_records_the_style_and_its_loras(engine: DiffusionEngine, settings: GenerationSettings) -> None:
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    await worker.start()
    try:
        result = await worker.submit(job(settings, "mixed", seed=5))
    finally:
        await worker.close()
    text = read_parameters(result.images[0].png) or ""
    assert text.startswith("a red cat, film grain <lora:look:0.7> <lora:grain:1>\nNegative prompt: digital\n")
    back = parse_parameters(text)
    assert back["loras"] == [("look", 0.7), ("grain", 1.0)] and back["Style"] == "mixed" and back["Seed"] == 5
