"""Several models: lazy loading, the least recently used one unloaded, a broken one failing only its own jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.engine import DiffusionEngine
from generation.errors import JobRefusedError
from generation.loading import LoadedModel, ModelLoadError, load_model
from generation.models import ModelRegistry
from generation.png import parse_parameters, read_parameters
from generation.request import validate_request
from generation.settings import GenerationSettings
from generation.tiny import build_tiny_pipeline
from generation.worker import GenerationFailedError, GenerationResult, GenerationWorker

pytestmark = pytest.mark.timeout(300)
SIZES = {"min_size": 64, "default_width": 64, "default_height": 64, "default_steps": 2, "device": "cpu"}


class CountingLoader:
    def __init__(self) -> None:
        self.loads: list[str] = []

    def __call__(self, source: str, settings: GenerationSettings, name: str) -> LoadedModel:
        self.loads.append(name)
        return load_model(source, settings, name=name)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny with different UNet output weights, as a diffusers folder: a second model that draws differently."""
    pipe = build_tiny_pipeline()
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(-3.0)
    folder = tmp_path_factory.mktemp("other-model")
    pipe.save_pretrained(folder)
    return folder


def test_models_load_lazily_and_the_least_recently_used_is_unloaded() -> None:
    settings = GenerationSettings(models={"a": "tiny", "b": "tiny", "c": "tiny"}, max_loaded_models=2, **SIZES)
    loader = CountingLoader()
    registry = ModelRegistry(settings, loader=loader)
    assert registry.loaded_names() == [] and registry.names == ("a", "b", "c") and registry.default_name == "a"
    a = registry.get("a")
    assert registry.get("") is a and registry.get("a") is a and loader.loads == ["a"]
    unet_of_a = weakref.ref(a.pipeline.unet)
    del a
    registry.get("b")
    registry.get("c")
    assert registry.loaded_names() == ["b", "c"]
    gc.collect()
    assert unet_of_a() is None  # unloaded means its weights are gone, not just forgotten
    registry.get("b")  # b is now the most recently used
    registry.get("a")
    assert registry.loaded_names() == ["b", "a"] and loader.loads == ["a", "b", "c", "a"]
    assert registry.peek("c") is None and registry.unload("b") and registry.loaded_names() == ["a"]
    assert not registry.unload("b")


def test_a_model_that_cannot_load_is_remembered_for_a_while(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    settings = GenerationSettings(models={"good": "tiny", "broken": str(missing)}, **SIZES)
    now = [0.0]
    loader = CountingLoader()
    registry = ModelRegistry(settings, loader=loader, retry_after=60, clock=lambda: now[0])
    with pytest.raises(ModelLoadError, match=str(missing)):
        registry.get("broken")
    now[0] = 59.0
    with pytest.raises(ModelLoadError, match=str(missing)):
        registry.get("broken")
    assert loader.loads == ["broken"]
    now[0] = 61.0
    with pytest.raises(ModelLoadError):
        registry.get("broken")
    assert loader.loads == ["broken", "broken"]
    assert registry.get("good").name == "good"
    with pytest.raises(ModelLoadError, match="no model named 'nope'"):
        registry.get("nope")


def test_the_default_model_falls_back_to_tiny_when_configured(tmp_path: Path) -> None:
    settings = GenerationSettings(models={"main": str(tmp_path / "absent.safetensors")}, fallback_to_tiny=True,
                                  **SIZES)
    loaded = ModelRegistry(settings).get("main")
    assert loaded.is_fallback and loaded.name == "tiny" and "absent.safetensors" in (loaded.banner or "")


def test_each_batch_runs_on_its_own_model(other_model: Path) -> None:
    settings = GenerationSettings(models={"tiny": "tiny", "other": str(other_model)}, **SIZES)
    engine = DiffusionEngine(ModelRegistry(settings), settings)
    first = validate_request(settings, prompt="a cat", seed=3, steps=2, width=64, height=64)
    second = validate_request(settings, prompt="a cat", seed=3, steps=2, width=64, height=64, model="other")
    assert engine.batch_key(first) != engine.batch_key(second)
    a, b = (np.asarray(engine.generate([r])[0][0], dtype=np.int16) for r in (first, second))
    assert np.abs(a - b).mean() > 1
    assert engine.models.loaded_names() == ["tiny", "other"]
    assert engine.model_label(second.params) == "other"


async def test_jobs_for_a_broken_model_fail_alone_with_a_clear_message(tmp_path: Path) -> None:
    settings = GenerationSettings(models={"good": "tiny", "broken": str(tmp_path / "gone.safetensors")}, **SIZES)
    engine = DiffusionEngine(ModelRegistry(settings), settings)
    worker = GenerationWorker(engine, queue_size=8, max_batch_size=4)
    await worker.start()
    try:
        jobs = [worker.submit(validate_request(settings, prompt="x", model=model, steps=2, width=64, height=64,
                                               requester_id=member))
                for model, member in (("broken", "a"), ("good", "b"), ("broken", "c"))]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await worker.close()
    broken_a, good, broken_c = outcomes
    assert isinstance(good, GenerationResult) and good.model_name == "good"
    assert parse_parameters(read_parameters(good.images[0].png) or "")["Model"] == "good"
    for failure in (broken_a, broken_c):
        assert isinstance(failure, GenerationFailedError)
        assert failure.message == ("The model 'broken' could not be loaded, so this job was not run; the error was "
                                   "logged for the bot's admin. Please choose another model.")
    assert "gone.safetensors" not in broken_a.message  # the server's paths stay in the log


def test_a_model_removed_from_the_settings_is_refused_by_name() -> None:
    settings = GenerationSettings(model="tiny", **SIZES)
    engine = DiffusionEngine(ModelRegistry(settings), settings)
    request = validate_request(settings, prompt="x", steps=2, width=64, height=64)
    stale = dataclasses.replace(request, params=dataclasses.replace(request.params, model="retired"))
    with pytest.raises(JobRefusedError, match="^The model 'retired' is not available on this bot any more; "
                                              "choose one of: tiny.$"):
        engine.generate([stale])
