"""validate_request: defaults, the random seed, and one row per refusal with a member-readable message."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from PIL import Image
from pydantic import ValidationError

from generation.request import (
    MAX_SEED,
    SCHEDULER_NAMES,
    GenerationRequest,
    ImageParams,
    RequestError,
    fitted_size,
    min_steps_for,
    upscale_request,
    upscaled_size,
    validate_request,
    variation_request,
)
from generation.settings import GenerationSettings, LoraSettings, StyleSettings

SETTINGS = GenerationSettings(min_size=256, max_size=1024, max_pixels=768 * 768, max_steps=50, default_steps=25)


def test_defaults_are_filled_from_settings() -> None:
    request = validate_request(SETTINGS, prompt="  a tea garden with mist  ")
    assert request.requester_id == "cli" and request.init_image is None
    req = request.params
    assert req.prompt == "a tea garden with mist"
    assert req.negative_prompt == ""
    assert req.steps == SETTINGS.default_steps
    assert req.guidance == SETTINGS.default_guidance
    assert (req.width, req.height) == (SETTINGS.default_width, SETTINGS.default_height)
    assert req.count == 1
    assert req.scheduler == SETTINGS.default_scheduler
    assert req.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the default model, named explicitly
    assert (req.strength, req.upscale, req.style, req.loras, req.parent_seed) == (None, None, "", (), None)
    assert 0 <= req.seed <= MAX_SEED


def test_explicit_values_are_kept() -> None:
    req = validate_request(SETTINGS, prompt="cat", negative_prompt="blurry", seed=7, steps=50, guidance=0,
                           width=768, height=768, count=4, scheduler="ddim", requester_id="42")
    params = ImageParams("cat", "blurry", 7, 50, 0.0, 768, 768, 4, "ddim", SETTINGS.default_model_name)
    assert req == GenerationRequest(params, "42")


def test_random_seed_is_drawn_and_recorded() -> None:
    seeds = {validate_request(SETTINGS, prompt="x").params.seed for _ in range(8)}
    assert len(seeds) > 1
    assert all(0 <= s <= MAX_SEED for s in seeds)


def test_request_is_frozen() -> None:
    req = validate_request(SETTINGS, prompt="x", seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.params.seed = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.params = req.params  # type: ignore[misc]


def test_known_schedulers_include_the_common_ones() -> None:
    assert {"euler_a", "dpmpp_2m", "ddim"} <= set(SCHEDULER_NAMES)


def test_web_ui_scheduler_labels_become_short_names() -> None:
    assert validate_request(SETTINGS, prompt="x", scheduler="Euler a").params.scheduler == "euler_a"
    assert validate_request(SETTINGS, prompt="x", scheduler="DPM++ 2M").params.scheduler == "dpmpp_2m"


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


# --- ImageParams as a value --------------------------------------------------------------------------------------


def png_bytes(width: int = 64, height: int = 48, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (10, 20, 30) if mode == "RGB" else 0).save(buffer, format=fmt)
    return buffer.getvalue()


STYLED = GenerationSettings(
    models={"base": "tiny", "anime": "/models/anime.safetensors"},
    default_model="base",
    min_size=64, max_size=512, max_pixels=256 * 256, default_width=64, default_height=64,
    max_upscale_pixels=256 * 256,
    styles={
        "film": StyleSettings(prompt="analog film photo of {prompt}, grain", negative="digital, cgi",
                              loras=[LoraSettings(path="/loras/film-look.safetensors", weight=0.8)]),
        "plain": StyleSettings(),
    },
)


def test_to_dict_is_json_and_from_dict_gives_the_same_value() -> None:
    params = ImageParams("cat", "blurry", 5, 20, 7.5, 512, 768, 2, "ddim", "anime", 0.35, 2.0, "film",
                         (("film-look", 0.8), ("x", -1.0)), 4)
    data = json.loads(json.dumps(params.to_dict()))
    assert data["loras"] == [["film-look", 0.8], ["x", -1.0]]
    assert ImageParams.from_dict(data) == params
    assert ImageParams.from_dict({"prompt": "only a prompt"}) == ImageParams("only a prompt")
    assert ImageParams.from_dict({**data, "guidance": 7}).guidance == 7.0  # JSON may write 7.0 as 7


@pytest.mark.parametrize(("change", "problem"), [
    ({"colour": "red"}, "colour"),
    ({"seed": "5"}, "seed"),
    ({"seed": True}, "seed"),
    ({"steps": 2.5}, "steps"),
    ({"loras": [["a"]]}, "loras"),
    ({"strength": "high"}, "strength"),
    ({"prompt": None}, "prompt"),
])
def test_from_dict_refuses_unknown_keys_and_wrong_types(change: dict, problem: str) -> None:
    data = {**ImageParams("cat").to_dict(), **change}
    with pytest.raises(ValueError, match=problem):
        ImageParams.from_dict(data)
    with pytest.raises(ValueError, match="prompt"):
        ImageParams.from_dict({"seed": 1})


def test_denoising_steps_follow_diffusers_img2img() -> None:
    assert ImageParams("x", steps=20).denoising_steps == 20
    assert ImageParams("x", steps=20, strength=0.35).denoising_steps == 7  # int(20 * 0.35)
    assert ImageParams("x", steps=3, strength=0.3).denoising_steps == 0  # 0.8999...: validation refuses this
    assert ImageParams("x", steps=20, strength=1.0).denoising_steps == 20


# --- img2img, upscale, models, styles ------------------------------------------------------------------------------


def test_image_makes_img2img_at_the_default_strength_and_a_fitted_size() -> None:
    request = validate_request(STYLED, prompt="cat", init_image=png_bytes(640, 480), seed=1)
    params = request.params
    assert params.strength == STYLED.default_strength and params.upscale is None
    assert (params.width, params.height) == (288, 216)  # 640x480 brought within 256*256 pixels, same aspect
    assert request.init_image is not None
    explicit = validate_request(STYLED, prompt="cat", init_image=png_bytes(), strength=0.5, width=64, height=128)
    assert (explicit.params.width, explicit.params.height, explicit.params.strength) == (64, 128, 0.5)


def test_upscale_size_comes_from_the_image_clamped_to_the_pixel_cap() -> None:
    params = validate_request(STYLED, prompt="cat", init_image=png_bytes(64, 64), upscale=2).params
    assert (params.width, params.height, params.upscale) == (128, 128, 2.0)
    assert params.strength == STYLED.upscale_strength
    clamped = validate_request(STYLED, prompt="cat", init_image=png_bytes(192, 128), upscale=4).params
    assert (clamped.width, clamped.height) == (256, 192)  # 768x512 is over 256*256: 313x209, rounded down
    assert clamped.width * clamped.height <= STYLED.max_upscale_pixels


def test_pure_size_helpers() -> None:
    assert upscaled_size(512, 512, 2.0, 1024 * 1024) == (1024, 1024)
    assert upscaled_size(768, 512, 2.0, 1024 * 1024) == (1216, 832)  # factor clamped to sqrt(1M / 393k) = 1.63
    assert upscaled_size(520, 520, 2.0, 4096 * 4096) == (1024, 1024)  # multiples of 64, rounded down
    assert upscaled_size(512, 512, 2.0, 1024 * 1024, multiple=8) == (1024, 1024)
    w, h = upscaled_size(1000, 600, 3.0, 1024 * 1024)
    assert w % 64 == 0 and h % 64 == 0 and w * h <= 1024 * 1024
    assert fitted_size(4000, 3000, SETTINGS) == (880, 664)  # at most 768*768 pixels, multiples of 8
    assert fitted_size(100, 100, SETTINGS) == (256, 256)  # raised to min_size
    assert [min_steps_for(s) for s in (1.0, 0.75, 0.35, 0.3, 0.05)] == [1, 2, 3, 4, 20]
    for strength in (0.05, 0.1, 0.3, 0.35, 0.7, 0.75):
        assert int(min_steps_for(strength) * strength) >= 1 > int((min_steps_for(strength) - 1) * strength)


def test_model_names_come_from_the_settings() -> None:
    assert validate_request(STYLED, prompt="x").params.model == "base"
    assert validate_request(STYLED, prompt="x", model="anime").params.model == "anime"
    with pytest.raises(RequestError, match=r"^model must be one of: base, anime \(got nope\)\.$"):
        validate_request(STYLED, prompt="x", model="nope")


def test_style_applies_its_template_negative_and_loras() -> None:
    params = validate_request(STYLED, prompt="a {cat}", negative_prompt="blurry", style="film").params
    assert params.prompt == "analog film photo of a {cat}, grain"  # braces in the prompt stay literal
    assert params.negative_prompt == "blurry, digital, cgi"
    assert params.style == "film" and params.loras == (("film-look", 0.8),)
    bare = validate_request(STYLED, prompt="a cat", style="film").params
    assert bare.negative_prompt == "digital, cgi"
    assert validate_request(STYLED, prompt="a cat", style="plain").params.prompt == "a cat"


@pytest.mark.parametrize("options", [
    {"prompt": "a cat", "negative_prompt": "blurry", "style": "film"},
    {"prompt": "a cat", "style": "film", "init_image": png_bytes(), "strength": 0.4},
    {"prompt": "a cat", "init_image": png_bytes(64, 64), "upscale": 2, "parent_seed": 9},
    {"prompt": "a cat", "model": "anime", "count": 3, "scheduler": "Euler a"},
])
def test_validating_params_again_gives_them_back(options: dict) -> None:
    first = validate_request(STYLED, **options)
    again = validate_request(STYLED, **first.params.to_dict(), init_image=first.init_image)
    assert again.params == first.params


def test_upscale_and_variation_requests_from_a_parent() -> None:
    parent = validate_request(STYLED, prompt="a cat", style="film", seed=100, count=4, steps=4).params
    image = png_bytes(64, 64)
    up = upscale_request(STYLED, parent, 2, image, requester_id="u1")
    assert up.requester_id == "u1" and up.init_image == image
    p = up.params
    assert (p.seed, p.parent_seed, p.count, p.width, p.height) == (102, 102, 1, 128, 128)
    assert (p.prompt, p.style, p.loras) == (parent.prompt, "film", parent.loras)  # the template is not doubled
    assert (p.strength, p.upscale, p.steps) == (0.35, 2.0, 4)
    subtle = variation_request(STYLED, parent, 1, image, strong=False, requester_id="u1", seed=7).params
    strong = variation_request(STYLED, parent, 1, image, strong=True, requester_id="u1").params
    assert (subtle.seed, subtle.parent_seed, subtle.strength, subtle.upscale) == (7, 101, 0.35, None)
    assert strong.strength == 0.75 and (strong.width, strong.height) == (64, 64)
    few = variation_request(STYLED, dataclasses.replace(parent, steps=2), 0, image, strong=False, requester_id="u")
    assert few.params.steps == 3  # raised so that int(steps * 0.35) is at least one step


def test_settings_of_models_and_styles() -> None:
    assert GenerationSettings(model="tiny").model_sources() == {"tiny": "tiny"}
    assert GenerationSettings(model="/m/dream.safetensors").default_model_name == "dream.safetensors"
    assert GenerationSettings(model="owner/name").default_model_name == "owner/name"
    assert GenerationSettings(models={"a": "tiny", "b": "tiny"}).default_model_name == "a"
    assert STYLED.lora_paths() == {"film-look": "/loras/film-look.safetensors"}
    assert LoraSettings(path="/x/my.lora v2.safetensors").name == "my_lora_v2"
    bad = [
        ({"model": "tiny", "models": {"a": "tiny"}}, "not both"),
        ({"models": {"a": "tiny"}, "default_model": "b"}, "default_model"),
        ({"models": {"a,b": "tiny"}}, "model name"),
        ({"styles": {"s": {"prompt": "no placeholder"}}}, "exactly once"),
        ({"styles": {"s": {"loras": [{"path": "/a/x.safetensors"}]}, "t": {"loras": [{"path": "/b/x.safetensors"}]}}},
         "two files"),
        ({"upscale_factor": 1.0}, "upscale_factor"),
    ]
    for data, message in bad:
        with pytest.raises(ValidationError, match=message):
            GenerationSettings.model_validate(data)


NEW_REFUSALS = [
    ({"style": "noir"}, "style must be one of: film, plain (got noir)."),
    ({"strength": 0.5}, "strength needs an image to start from; attach one."),
    ({"strength": 0.01, "init_image": png_bytes()}, "strength must be a number between 0.05 and 1 (got 0.01)."),
    ({"strength": 1.5, "init_image": png_bytes()}, "strength must be a number between 0.05 and 1 (got 1.5)."),
    ({"strength": 0.3, "steps": 3, "init_image": png_bytes()},
     "steps x strength must leave at least one step (got 3 x 0.3); use at least 4 steps or a higher strength."),
    ({"upscale": 2}, "upscale needs the image to upscale."),
    ({"upscale": 1, "init_image": png_bytes()}, "upscale must be more than 1 (got 1)."),
    ({"upscale": 5, "init_image": png_bytes()}, "upscale must be a number between 1 and 4 (got 5)."),
    ({"upscale": 2, "init_image": png_bytes(256, 256)},
     "this image is already as large as an upscale may be (65536 pixels)."),
    ({"upscale": 2, "init_image": png_bytes(), "width": 120, "height": 128},
     "the upscaled width must be a multiple of 64 of at least 64 (got 120)."),
    ({"upscale": 2, "init_image": png_bytes(), "width": 512, "height": 256},
     "an upscale must be at most 65536 pixels (got 512x256 = 131072)."),
    ({"init_image": b"just some text"}, "the image could not be read; send a PNG, JPEG or WebP file."),
    ({"init_image": png_bytes(fmt="GIF", mode="P")}, "the image must be a PNG, JPEG or WebP file (got GIF)."),
    ({"loras": [["film-look", 0.8]]}, "loras come from a style; choose a style instead (got [('film-look', 0.8)])."),
    ({"style": "film", "loras": [["film-look", 1.0]]},
     "loras come from the style; style film has [('film-look', 0.8)], not [('film-look', 1.0)]."),
    ({"style": "film", "loras": [["film-look"]]}, "loras must be [name, weight] pairs (got [['film-look']])."),
    ({"parent_seed": -1}, "parent seed must be a whole number between 0 and 4294967295 (got -1)."),
    ({"guidance": True}, "guidance must be a number between 0 and 30 (got True)."),
]


@pytest.mark.parametrize(("overrides", "message"), NEW_REFUSALS, ids=[m[:40] for _, m in NEW_REFUSALS])
def test_refusals_of_images_upscales_and_styles(overrides: dict, message: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_request(STYLED, prompt="a lighthouse", **overrides)
    assert info.value.message.startswith(message)
