"""validate_request: defaults, the random seed, and one row per refusal with a member-readable message."""

from __future__ import annotations

import dataclasses

import pytest

from generation.request import MAX_SEED, SCHEDULER_NAMES, GenerationRequest, RequestError, validate_request
from generation.settings import GenerationSettings

SETTINGS = GenerationSettings(min_size=256, max_size=1024, max_pixels=768 * 768, max_steps=50, default_steps=25)


def test_defaults_are_filled_from_settings() -> None:
    req = validate_request(SETTINGS, prompt="  a tea garden with mist  ")
    assert req.prompt == "a tea garden with mist"
    assert req.negative_prompt == ""
    assert req.steps == SETTINGS.default_steps
    assert req.guidance == SETTINGS.default_guidance
    assert (req.width, req.height) == (SETTINGS.default_width, SETTINGS.default_height)
    assert req.count == 1
    assert req.scheduler == SETTINGS.default_scheduler
    assert req.requester_id == "cli"
    assert req.model == ""
    assert 0 <= req.seed <= MAX_SEED


def test_explicit_values_are_kept() -> None:
    req = validate_request(SETTINGS, prompt="cat", negative_prompt="blurry", seed=7, steps=50, guidance=0,
                           width=768, height=768, count=4, scheduler="ddim", requester_id="42")
    assert req == GenerationRequest("cat", "blurry", 7, 50, 0.0, 768, 768, 4, "ddim", "42")


def test_random_seed_is_drawn_and_recorded() -> None:
    seeds = {validate_request(SETTINGS, prompt="x").seed for _ in range(8)}
    assert len(seeds) > 1
    assert all(0 <= s <= MAX_SEED for s in seeds)


def test_request_is_frozen() -> None:
    req = validate_request(SETTINGS, prompt="x", seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.seed = 2  # type: ignore[misc]


def test_known_schedulers_include_the_common_ones() -> None:
    assert {"euler_a", "dpmpp_2m", "ddim"} <= set(SCHEDULER_NAMES)


def test_web_ui_scheduler_labels_become_short_names() -> None:
    assert validate_request(SETTINGS, prompt="x", scheduler="Euler a").scheduler == "euler_a"
    assert validate_request(SETTINGS, prompt="x", scheduler="DPM++ 2M").scheduler == "dpmpp_2m"


REFUSALS = [
    ({"prompt": "   "}, "prompt must not be empty."),
    ({"prompt": "x" * 1001}, "prompt must be at most 1000 characters (got 1001)."),
    ({"negative_prompt": "y" * 1001}, "negative prompt must be at most 1000 characters (got 1001)."),
    ({"width": 300}, "width must be a multiple of 8 between 256 and 1024 (got 300)."),
    ({"width": 248}, "width must be a multiple of 8 between 256 and 1024 (got 248)."),
    ({"width": 1032}, "width must be a multiple of 8 between 256 and 1024 (got 1032)."),
    ({"height": 513}, "height must be a multiple of 8 between 256 and 1024 (got 513)."),
    ({"height": 128}, "height must be a multiple of 8 between 256 and 1024 (got 128)."),
    ({"width": 1024, "height": 1024},
     "width x height must be at most 589824 pixels (got 1024x1024 = 1048576)."),
    ({"steps": 0}, "steps must be a whole number between 1 and 50 (got 0)."),
    ({"steps": 51}, "steps must be a whole number between 1 and 50 (got 51)."),
    ({"guidance": -0.5}, "guidance must be a number between 0 and 30 (got -0.5)."),
    ({"guidance": 30.5}, "guidance must be a number between 0 and 30 (got 30.5)."),
    ({"guidance": float("nan")}, "guidance must be a number between 0 and 30 (got nan)."),
    ({"count": 0}, "count must be a whole number between 1 and 4 (got 0)."),
    ({"count": 5}, "count must be a whole number between 1 and 4 (got 5)."),
    ({"seed": -1}, "seed must be a whole number between 0 and 4294967295 (got -1)."),
    ({"seed": 2**32}, "seed must be a whole number between 0 and 4294967295 (got 4294967296)."),
    ({"scheduler": "bogus"}, "scheduler must be one of"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSALS, ids=[str(sorted(o)) for o, _ in REFUSALS])
def test_refusals_name_option_value_and_range(overrides: dict, message: str) -> None:
    kwargs = {"prompt": "a lighthouse", **overrides}
    with pytest.raises(RequestError) as info:
        validate_request(SETTINGS, **kwargs)
    assert info.value.message.startswith(message)
    assert str(info.value) == info.value.message
    assert isinstance(info.value, ValueError)
    if overrides.get("scheduler") == "bogus":
        assert "(got bogus)." in info.value.message and "euler_a" in info.value.message
