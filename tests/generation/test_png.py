"""PNG parameters in the web-UI format: written, embedded, read back and parsed."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image

from generation.png import encode_png, parameters_text, parse_parameters, read_parameters
from generation.request import ImageParams

BASE = ImageParams(prompt="a cat in a hat", negative_prompt="blurry, ugly", seed=5, steps=20, guidance=7.5,
                   width=512, height=768, count=1, scheduler="dpmpp_2m")


def image() -> Image.Image:
    return Image.new("RGB", (16, 8), (10, 200, 30))


def test_format_matches_a1111() -> None:
    assert parameters_text(BASE, 6, "tiny") == (
        "a cat in a hat\nNegative prompt: blurry, ugly\n"
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 6, Size: 512x768, Model: tiny"
    )


def test_empty_negative_prompt_line_is_left_out() -> None:
    text = parameters_text(dataclasses.replace(BASE, negative_prompt="", scheduler="euler_a", guidance=7.0), 5, "m")
    assert text == "a cat in a hat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768, Model: m"
    assert "Negative prompt" not in text


def test_png_keeps_pixels_and_carries_a_parameters_text_chunk() -> None:
    text = parameters_text(BASE, 5, "tiny")
    data = encode_png(image(), text)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"tEXtparameters\x00" in data
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (16, 8) and img.getpixel((3, 3)) == (10, 200, 30)
        assert img.text["parameters"] == text
    assert read_parameters(data) == text


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a cat, in a hat, (masterpiece:1.2)", "blurry, lowres"),
        ("line one\nline two, with commas\n\nafter a blank line", "neg one\nneg two"),
        ("日本の猫 ✨ café — «quoted» \"double\"", "ぼやけた"),
        ("Steps are fine in a prompt: Seed: 3", ""),
    ],
)
def test_round_trip(prompt: str, negative: str) -> None:
    request = dataclasses.replace(BASE, prompt=prompt, negative_prompt=negative)
    text = parameters_text(request, 4294967295, "my-model.safetensors")
    back = parse_parameters(read_parameters(encode_png(image(), text)) or "")
    assert back["prompt"] == prompt
    assert back["negative_prompt"] == negative
    assert back["Steps"] == 20 and back["Seed"] == 4294967295 and back["CFG scale"] == 7.5
    assert back["Sampler"] == "DPM++ 2M" and back["Model"] == "my-model.safetensors"
    assert (back["width"], back["height"]) == (512, 768)
    assert back["loras"] == [] and "Denoising strength" not in back and "Parent seed" not in back


def test_img2img_upscale_lora_and_parent_are_recorded_the_web_ui_way() -> None:
    params = dataclasses.replace(BASE, strength=0.35, upscale=2.0, parent_seed=41, style="film, v2",
                                 loras=(("film-look", 0.8), ("grain", -0.5)))
    text = parameters_text(params, 6, "anime: v3")
    assert text == (
        "a cat in a hat <lora:film-look:0.8> <lora:grain:-0.5>\nNegative prompt: blurry, ugly\n"
        'Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 6, Size: 512x768, Model: "anime: v3", '
        'Denoising strength: 0.35, Hires upscale: 2, Parent seed: 41, Style: "film, v2"'
    )
    back = parse_parameters(read_parameters(encode_png(image(), text)) or "")
    assert back["prompt"] == "a cat in a hat" and back["loras"] == [("film-look", 0.8), ("grain", -0.5)]
    assert back["Denoising strength"] == 0.35 and back["Hires upscale"] == 2.0 and back["Parent seed"] == 41
    assert back["Model"] == "anime: v3" and back["Style"] == "film, v2" and back["Seed"] == 6


def test_lora_tags_inside_a_prompt_stay_in_it() -> None:
    back = parse_parameters("a <lora:x:1> cat\nSteps: 4, Seed: 1")
    assert back["prompt"] == "a <lora:x:1> cat" and back["loras"] == []
    assert parse_parameters("<lora:x:1>\nSteps: 4")["prompt"] == "<lora:x:1>"  # a prompt of only tags is kept


def test_parse_foreign_web_ui_text_with_quoted_values() -> None:
    text = ('portrait\nNegative prompt: bad hands\nSteps: 30, Sampler: Euler a, CFG scale: 6, Seed: 12, '
            'Size: 512x512, Model hash: abc123, Lora hashes: "x: 1, y: 2", Clip skip: 2')
    back = parse_parameters(text)
    assert back["prompt"] == "portrait" and back["negative_prompt"] == "bad hands"
    assert back["Lora hashes"] == "x: 1, y: 2" and back["Clip skip"] == 2 and back["Model hash"] == "abc123"


def test_text_without_settings_line_is_all_prompt() -> None:
    assert parse_parameters("just a prompt") == {"prompt": "just a prompt", "negative_prompt": "", "loras": []}


def test_read_parameters_of_other_pngs_and_non_pngs() -> None:
    plain = io.BytesIO()
    image().save(plain, format="PNG")
    assert read_parameters(plain.getvalue()) is None
    assert read_parameters(b"not a png") is None
