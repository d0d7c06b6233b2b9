"""Trailing Midjourney flags and aspect ratios: what a member typed becomes the options they meant."""

from __future__ import annotations

import pytest

from bot.gate.aspect import ASPECT_PRESETS, aspect_size, member_values, parse_ratio
from bot.gate.prompt_flags import PromptFlags, parse_prompt_flags
from generation.request import RequestError
from generation.settings import GenerationSettings

SETTINGS = GenerationSettings(model="tiny", default_width=512, default_height=512, min_size=256, max_size=1024,
                              max_pixels=1024 * 1024)


@pytest.mark.parametrize(("text", "expected"), [
    ("a red fox", PromptFlags("a red fox")),
    ("  a red fox  ", PromptFlags("a red fox")),
    ("a red fox --ar 16:9", PromptFlags("a red fox", aspect="16:9")),
    ("a red fox —ar 16:9", PromptFlags("a red fox", aspect="16:9")),  # a phone's em dash
    ("a red fox --aspect 2:3", PromptFlags("a red fox", aspect="2:3")),
    ("a red fox --AR 4:3", PromptFlags("a red fox", aspect="4:3")),
    ("a red fox --no trees, cars", PromptFlags("a red fox", negative="trees, cars")),
    ("a fox --no  trees   --seed 5", PromptFlags("a fox", negative="trees", seed=5)),
    ("a fox --seed 5 --steps 30 --ar 3:2 --no blur",
     PromptFlags("a fox", aspect="3:2", negative="blur", seed=5, steps=30)),
    ("a fox\n--steps 12", PromptFlags("a fox", steps=12)),
    ("a well-known fox -- running", PromptFlags("a well-known fox -- running")),  # "--" alone is not a flag
    ("a fox--ar 16:9", PromptFlags("a fox--ar 16:9")),  # glued to a word: part of the prompt
    ("a fox -1 --5", PromptFlags("a fox -1 --5")),  # flags start with a letter
    ("--seed 3", PromptFlags("", seed=3)),  # an empty prompt is validate_request's to refuse
])
def test_trailing_flags_are_read(text: str, expected: PromptFlags) -> None:
    assert parse_prompt_flags(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("a fox --chaos 50", "--chaos is not understood here; at the end of a prompt you can use --ar, --no, --seed"),
    ("a fox —v 6", "--v is not understood"),
    ("a fox --seed five", "--seed takes one whole number, like --seed 30 (got 'five')"),
    ("a fox --seed -5", "--seed takes one whole number"),
    ("a fox --steps 2.5", "--steps takes one whole number"),
    ("a fox --seed", "--seed needs a value, like --seed 5"),
    ("a fox --no", "--no needs a value"),
    ("a fox --ar 16:9 sitting on a mat", "--ar takes one value, like --ar 16:9 (got '16:9 sitting on a mat'); "
                                         "flags go at the very end"),
    ("a fox --seed 1 --seed 2", "--seed is given twice"),
    ("a fox --ar 1:1 --aspect 2:3", "--ar is given twice"),
])
def test_bad_flags_are_refused_with_a_sentence(text: str, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_prompt_flags(text)
    assert message in caught.value.message


@pytest.mark.parametrize(("ratio", "size"), [
    ("1:1", (512, 512)), ("4:3", (576, 448)), ("3:4", (448, 576)), ("3:2", (640, 448)), ("2:3", (448, 640)),
    ("16:9", (704, 384)), ("9:16", (384, 704)), ("21:9", (768, 320)),
])
def test_presets_keep_the_pixel_budget_in_multiples_of_64(ratio: str, size: tuple[int, int]) -> None:
    width, height = aspect_size(ratio, SETTINGS)
    assert (width, height) == size
    assert width % 64 == 0 and height % 64 == 0
    assert abs(width * height - 512 * 512) / (512 * 512) < 0.1  # about the budget
    across, down = parse_ratio(ratio)
    assert abs(width / height - across / down) / (across / down) < 0.12  # about the shape


def test_every_preset_fits_the_bounds_of_a_small_config() -> None:
    small = GenerationSettings(model="tiny", default_width=256, default_height=256, min_size=64, max_size=384,
                               max_pixels=256 * 256)
    for ratio in ASPECT_PRESETS:
        width, height = aspect_size(ratio, small)
        assert min(width, height) >= 64 and max(width, height) <= 384 and width * height <= 256 * 256, ratio
    assert aspect_size("16:9", small) == (320, 192)


@pytest.mark.parametrize("ratio", ["16x9", "16:", ":9", "0:1", "16:9:1", "a:b", "1000:1", "-1:2", "5:1"])
def test_bad_ratios_are_refused(ratio: str) -> None:
    with pytest.raises(RequestError):
        parse_ratio(ratio)


@pytest.mark.parametrize(("values", "expected"), [
    ({"prompt": "a fox"}, {"prompt": "a fox"}),
    ({"prompt": "a fox --ar 16:9"}, {"prompt": "a fox", "width": 704, "height": 384}),
    ({"prompt": "a fox", "aspect": "9:16"}, {"prompt": "a fox", "width": 384, "height": 704}),
    ({"prompt": "a fox --no trees", "negative_prompt": "blurry"},
     {"prompt": "a fox", "negative_prompt": "blurry, trees"}),
    ({"prompt": "a fox --no trees", "negative_prompt": ""}, {"prompt": "a fox", "negative_prompt": "trees"}),
    ({"prompt": "a fox --seed 5 --steps 9", "count": 2}, {"prompt": "a fox", "seed": 5, "steps": 9, "count": 2}),
    ({"prompt": "a fox --seed 5", "seed": 5}, {"prompt": "a fox", "seed": 5}),  # the same twice is fine
    ({"prompt": "a fox", "width": 320, "height": 256}, {"prompt": "a fox", "width": 320, "height": 256}),
])
def test_member_values(values: dict, expected: dict) -> None:
    assert member_values(SETTINGS, values) == expected


@pytest.mark.parametrize(("values", "message"), [
    ({"prompt": "a fox", "aspect": "16:9", "width": 512}, "give either an aspect ratio or width/height, not both"),
    ({"prompt": "a fox --ar 16:9", "height": 512}, "give either an aspect ratio or width/height, not both"),
    ({"prompt": "a fox --ar 16:9", "aspect": "4:3"}, "aspect is given twice (aspect: 4:3 and --ar 16:9); keep one"),
    ({"prompt": "a fox --seed 6", "seed": 5}, "seed is given twice (seed: 5 and --seed 6); keep one"),
    ({"prompt": "a fox --steps 6", "steps": 5}, "steps is given twice"),
    ({"prompt": "a fox --ar wide"}, "the aspect ratio must look like 16:9"),
])
def test_member_values_refusals(values: dict, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        member_values(SETTINGS, values)
    assert message in caught.value.message
