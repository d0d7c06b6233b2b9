"""img2img, Vary and Upscale on the real ``tiny`` pipeline: sizes, reproducibility, batching, shared weights, and
the optional upscaler model (a miniature x4 upscaler the tests build).

Resemblance to the starting image is not asserted here: ``tiny``'s autoencoder decides that, and it is fitted
elsewhere. Same-seed tolerance as in test_engine.py (float rounding of batched kernels).
"""

from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
import pytest
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionUpscalePipeline
from PIL import Image

import generation.engine as engine_module
from generation.engine import DiffusionEngine
from generation.errors import JobRefusedError
from generation.loading import load_pipeline
from generation.png import encode_png
from generation.request import GenerationRequest, upscale_request, validate_request, variation_request
from generation.settings import GenerationSettings

pytestmark = pytest.mark.timeout(300)

SETTINGS = GenerationSettings(model="tiny", device="cpu", min_size=64, max_size=256, max_pixels=256 * 256,
                              max_upscale_pixels=128 * 128, default_steps=4, default_width=64, default_height=64)
MAX_PIXEL_DIFF = 2
MAX_MEAN_DIFF = 0.05


@pytest.fixture(scope="module")
def engine() -> DiffusionEngine:
    return DiffusionEngine(load_pipeline(SETTINGS), SETTINGS)


def img2img(image: bytes, prompt: str = "a red cat", seed: int = 42, requester: str = "u1", **options) -> \
        GenerationRequest:
    options = {"strength": 0.5, "steps": 4, "width": 64, "height": 64, **options}
    return validate_request(SETTINGS, prompt=prompt, seed=seed, requester_id=requester, init_image=image, **options)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same(a: Image.Image, b: Image.Image) -> None:
    d = np.abs(pixels(a) - pixels(b))
    assert d.max() <= MAX_PIXEL_DIFF and d.mean() < MAX_MEAN_DIFF, (d.max(), d.mean())


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def png_of(image: Image.Image) -> bytes:
    return encode_png(image, "test")


def test_any_start_image_becomes_an_rgb_image_of_the_requested_size(engine: DiffusionEngine, picture) -> None:
    starts = [picture((100, 80), mode="RGBA"), picture((40, 90), mode="L", fmt="JPEG"),
              picture((64, 64), fmt="WEBP"), picture((64, 64), mode="P")]
    out = engine.generate([img2img(start, requester=f"u{i}", width=64, height=128) for i, start in enumerate(starts)])
    assert [len(images) for images in out] == [1, 1, 1, 1]
    assert all(images[0].size == (64, 128) and images[0].mode == "RGB" for images in out)


def test_same_inputs_same_pixels_alone_or_batched(engine: DiffusionEngine, picture) -> None:
    red, blue = picture(colour=(220, 30, 30)), picture(colour=(30, 30, 220))
    alone = engine.generate([img2img(red, negative_prompt="blurry")])[0][0]
    again = engine.generate([img2img(red, negative_prompt="blurry")])[0][0]
    batch = engine.generate([
        img2img(blue, "a blue dog", seed=7, requester="u2", count=2),
        img2img(red, negative_prompt="blurry"),
        img2img(red, "a castle", seed=5, requester="u3"),
    ])
    assert [len(images) for images in batch] == [2, 1, 1]
    assert_same(alone, again)
    assert_same(alone, batch[1][0])
    assert mean_diff(alone, batch[2][0]) > 1  # another seed and prompt from the same start image differ
    second_alone = engine.generate([img2img(blue, "a blue dog", seed=8, requester="u2")])[0][0]
    assert_same(batch[0][1], second_alone)  # count=2 is seeds 7 and 8, one generator each


def test_img2img_shares_the_loaded_weights(engine: DiffusionEngine, picture, monkeypatch) -> None:
    built = []
    real_derived = engine_module._derived

    def spy(base, cls, scheduler):
        pipe = real_derived(base, cls, scheduler)
        built.append((base, pipe))
        return pipe

    monkeypatch.setattr(engine_module, "_derived", spy)
    engine.generate([img2img(picture())])
    ((base, pipe),) = built
    assert isinstance(pipe, StableDiffusionImg2ImgPipeline) and base is engine.models.get("").pipeline
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(pipe, name) is getattr(base, name), name
    base_ptrs = {p.data_ptr() for module in (base.unet, base.vae, base.text_encoder) for p in module.parameters()}
    pipe_ptrs = {p.data_ptr() for module in (pipe.unet, pipe.vae, pipe.text_encoder) for p in module.parameters()}
    assert pipe_ptrs == base_ptrs
    assert pipe.scheduler is not base.scheduler


def test_batch_keys_keep_kinds_and_strengths_apart(engine: DiffusionEngine, picture) -> None:
    a = img2img(picture(colour=(1, 2, 3)), "one", seed=1, requester="a")
    b = img2img(picture(colour=(200, 0, 0)), "two", seed=2, requester="b", count=3)
    assert engine.batch_key(a) == engine.batch_key(b)  # different images, prompts and seeds share a call
    text = validate_request(SETTINGS, prompt="one", steps=4, width=64, height=64)
    assert engine.batch_key(text) != engine.batch_key(a)
    assert engine.batch_key(img2img(picture(), strength=0.75)) != engine.batch_key(a)
    with pytest.raises(ValueError, match="batch key"):
        engine.generate([a, text])


def test_a_missing_or_unreadable_start_image_refuses_the_batch(engine: DiffusionEngine, picture) -> None:
    request = img2img(picture())
    with pytest.raises(JobRefusedError, match="no longer available"):
        engine.generate([dataclasses.replace(request, init_image=None)])
    with pytest.raises(JobRefusedError, match="could not be read"):
        engine.generate([dataclasses.replace(request, init_image=b"\x89PNG\r\n\x1a\nbroken")])


def test_vary_and_upscale_from_a_generated_image(engine: DiffusionEngine) -> None:
    parent = validate_request(SETTINGS, prompt="a lighthouse", seed=10, count=2, steps=4).params
    images = engine.generate([GenerationRequest(parent, "u1")])[0]
    second = png_of(images[1])

    up = upscale_request(SETTINGS, parent, 1, second, requester_id="u1")
    assert (up.params.width, up.params.height, up.params.seed, up.params.parent_seed) == (128, 128, 11, 11)
    big = engine.generate([up])[0][0]
    assert big.size == (128, 128)
    other = upscale_request(SETTINGS, parent, 0, png_of(images[0]), requester_id="u2")
    batched = engine.generate([other, up])
    assert_same(big, batched[1][0])  # upscales of different images batch together and stay reproducible

    subtle = variation_request(SETTINGS, parent, 1, second, strong=False, requester_id="u1", seed=99)
    strong = variation_request(SETTINGS, parent, 1, second, strong=True, requester_id="u1", seed=99)
    assert engine.batch_key(subtle) != engine.batch_key(strong)  # different strengths never share a call
    a, b = engine.generate([subtle])[0][0], engine.generate([strong])[0][0]
    assert a.size == b.size == (64, 64)
    assert mean_diff(a, b) > 0.5


def test_configured_upscaler_model_replaces_hires_fix(engine: DiffusionEngine, tiny_x4_upscaler) -> None:
    settings = SETTINGS.model_copy(update={"upscaler": str(tiny_x4_upscaler)})
    with_model = DiffusionEngine(engine.models.get(""), settings)
    parent = validate_request(SETTINGS, prompt="a lighthouse", seed=10, steps=4).params
    start = png_of(engine.generate([GenerationRequest(parent, "u1")])[0][0])
    up = upscale_request(settings, parent, 0, start, requester_id="u1")
    assert with_model.batch_key(up)[1] == "upscaler" and engine.batch_key(up)[1] == "img2img"

    seen: list[tuple[int, int]] = []
    first = with_model.generate([up], on_step=lambda s, t, lat: seen.append((s, t)))[0][0]
    assert first.size == (128, 128)
    upscaler = with_model._upscaler
    assert upscaler is not None and isinstance(upscaler.pipeline, StableDiffusionUpscalePipeline)
    assert upscaler.scale == 4
    total = up.params.denoising_steps
    assert seen == [(s, total) for s in range(1, total + 1)]
    batched = with_model.generate([upscale_request(settings, parent, 0, start, requester_id="u2"), up])
    assert_same(first, batched[1][0])
    assert mean_diff(first, engine.generate([up])[0][0]) > 1  # not the hires-fix path


def test_an_upscaler_that_is_no_upscaler_fails_upscales_only(engine: DiffusionEngine, tmp_path, caplog) -> None:
    folder = tmp_path / "not-an-upscaler"
    engine.models.get("").pipeline.save_pretrained(folder)
    settings = SETTINGS.model_copy(update={"upscaler": str(folder)})
    broken = DiffusionEngine(engine.models.get(""), settings)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, format="PNG")
    up = validate_request(settings, prompt="x", steps=4, init_image=buffer.getvalue(), upscale=2)
    with caplog.at_level(logging.ERROR, logger="generation.engine"), \
            pytest.raises(JobRefusedError, match="^Upscaling is not available right now"):
        broken.generate([up])
    assert any("is a StableDiffusionPipeline, not a StableDiffusionUpscalePipeline" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(JobRefusedError):  # remembered: not loaded again for every job
        broken.generate([up])
    assert len(broken.generate([validate_request(settings, prompt="x", steps=2)])[0]) == 1


async def test_an_upscale_through_the_worker_records_how_it_was_made(engine: DiffusionEngine, picture) -> None:
    from generation.png import parse_parameters, read_parameters
    from generation.worker import GenerationWorker

    parent = validate_request(SETTINGS, prompt="a lighthouse", seed=20, steps=4).params
    worker = GenerationWorker(engine, queue_size=4, max_batch_size=4)
    await worker.start()
    try:
        result = await worker.submit(upscale_request(SETTINGS, parent, 0, picture(), requester_id="u1"))
    finally:
        await worker.close()
    image = result.images[0]
    assert (image.width, image.height, image.seed) == (128, 128, 20)
    back = parse_parameters(read_parameters(image.png) or "")
    assert back["prompt"] == "a lighthouse" and (back["width"], back["height"]) == (128, 128)
    assert (back["Denoising strength"], back["Hires upscale"], back["Parent seed"]) == (0.35, 2.0, 20)
