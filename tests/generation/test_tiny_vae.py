"""``tiny``'s fitted autoencoder: decode(encode(x)) resembles x on pictures it never saw, shapes stay where they
were, the latents follow SD's scaling, the fit is reproducible, and img2img through the real diffusers pipeline
keeps the input's look at low strength.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from generation.fit_tiny_vae import (
    FIT_SEED,
    fit_tiny_vae,
    init_as_pooling_autoencoder,
    rescale_latents,
    synthetic_batch,
)
from generation.tiny import TINY_SEED, TINY_VAE_CONFIG, TINY_VAE_WEIGHTS, build_tiny_pipeline

HELD_OUT_SEED = 4242  # the fit draws its pictures from FIT_SEED, FIT_SEED + 2
assert HELD_OUT_SEED not in (FIT_SEED, FIT_SEED + 1, FIT_SEED + 2)


@pytest.fixture(scope="module")
def tiny() -> StableDiffusionPipeline:
    return build_tiny_pipeline()


def correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Pearson correlation over all pixel values."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def photo_like(size: int = 256) -> torch.Tensor:
    """A landscape drawn from gradients and shapes (sky, sun, hills, house, tree), ``(3, size, size)`` in [-1, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.array([0.35, 0.55, 0.9]) + ys[..., None] * np.array([0.5, 0.35, 0.05])  # sky, paler at the horizon

    def paint(mask: np.ndarray, colour: tuple[float, float, float]) -> None:
        img[mask] = colour

    paint((ys - 0.18) ** 2 + (xs - 0.78) ** 2 < 0.08 ** 2, (1.0, 0.85, 0.3))  # sun
    hill = ys > 0.62 + 0.06 * np.sin(xs * 7)
    img[hill] = np.array([0.2, 0.55, 0.15]) * (0.7 + 0.5 * ys[hill, None])  # shaded grass
    paint((xs > 0.18) & (xs < 0.45) & (ys > 0.5) & (ys < 0.75), (0.75, 0.6, 0.45))  # house
    paint((ys < 0.5) & (ys > 0.34) & (np.abs(xs - 0.315) < (ys - 0.34) * 1.0), (0.6, 0.15, 0.1))  # roof
    paint((xs > 0.24) & (xs < 0.31) & (ys > 0.56) & (ys < 0.63), (0.95, 0.95, 0.7))  # window
    paint((xs > 0.34) & (xs < 0.4) & (ys > 0.62) & (ys < 0.75), (0.35, 0.2, 0.1))  # door
    paint((xs > 0.66) & (xs < 0.7) & (ys > 0.55) & (ys < 0.8), (0.4, 0.25, 0.1))  # trunk
    paint((ys - 0.48) ** 2 + (xs - 0.68) ** 2 < 0.11 ** 2, (0.1, 0.4, 0.12))  # crown
    return torch.from_numpy(img).permute(2, 0, 1) * 2 - 1


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    """Twelve synthetic pictures from a generator the fit never used, and the landscape."""
    return torch.cat([synthetic_batch(12, 256, torch.Generator().manual_seed(HELD_OUT_SEED)), photo_like()[None]])


def reconstruct(vae: AutoencoderKL, pictures: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """decode(encode(x)) through the posterior mode, or a posterior sample when ``generator`` is given."""
    with torch.no_grad():
        posterior = vae.encode(pictures).latent_dist
        latents = posterior.mode() if generator is None else posterior.sample(generator)
        return vae.decode(latents).sample.clamp(-1, 1)


def test_tiny_loads_the_shipped_vae_weights(tiny: StableDiffusionPipeline) -> None:
    shipped = load_file(str(TINY_VAE_WEIGHTS))
    state = tiny.vae.state_dict()
    assert shipped.keys() == state.keys()
    assert all(torch.equal(shipped[k], state[k]) for k in state)
    assert TINY_VAE_WEIGHTS.stat().st_size < 1_000_000


def test_held_out_pictures_come_back(tiny: StableDiffusionPipeline, held_out: torch.Tensor) -> None:
    pictures = held_out
    for generator in (None, torch.Generator().manual_seed(7)):  # the mode, and the sample img2img encodes with
        decoded = reconstruct(tiny.vae, pictures, generator)
        scores = [correlation(x, y) for x, y in zip(pictures, decoded, strict=True)]
        assert min(scores) >= 0.9, scores
    # a random VAE of the same shape does not: the weights make the difference
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    assert correlation(pictures[-1], reconstruct(random_vae, pictures[-1:])[0]) < 0.5


@pytest.mark.parametrize(("top", "left"), [(96, 64), (24, 176), (100, 60)])
def test_a_white_square_stays_in_place(tiny: StableDiffusionPipeline, top: int, left: int) -> None:
    """Also off the 8-pixel latent grid (100, 60): the square comes back where it was, its edges within a few pixels."""
    picture = -torch.ones(1, 3, 256, 256)
    picture[:, :, top:top + 48, left:left + 48] = 1
    decoded = (reconstruct(tiny.vae, picture)[0].mean(0) + 1) / 2  # brightness in [0, 1]
    square = torch.zeros(256, 256, dtype=torch.bool)
    square[top:top + 48, left:left + 48] = True
    near = torch.zeros_like(square)
    near[max(0, top - 8):top + 56, max(0, left - 8):left + 56] = True
    assert decoded[top + 8:top + 40, left + 8:left + 40].mean() > 0.9
    assert decoded[~near].mean() < 0.05
    bright = decoded > 0.5
    assert (bright & square).sum() / (bright | square).sum() > 0.8  # intersection over union
    ys, xs = torch.nonzero(bright, as_tuple=True)
    assert abs(ys.float().mean() - (top + 23.5)) < 2 and abs(xs.float().mean() - (left + 23.5)) < 2


def test_scaled_latents_have_unit_variance_and_little_posterior_noise(tiny: StableDiffusionPipeline,
                                                                    held_out: torch.Tensor) -> None:
    """The UNet's noise schedule assumes scaling_factor * latents of about unit variance, as SD's 0.18215 gives."""
    with torch.no_grad():
        posterior = tiny.vae.encode(held_out).latent_dist
    scaled_std = float(posterior.mean.std()) * tiny.vae.config.scaling_factor
    assert 0.75 < scaled_std < 1.33
    assert float(posterior.std.mean()) < 0.05 * float(posterior.mean.std())


def test_rescaling_the_latents_keeps_reconstructions(tiny: StableDiffusionPipeline, held_out: torch.Tensor) -> None:
    pictures = held_out[-3:]
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    vae.load_state_dict(tiny.vae.state_dict())
    rescale_latents(vae, 3.0)
    with torch.no_grad():
        before, after = tiny.vae.encode(pictures).latent_dist, vae.encode(pictures).latent_dist
    assert torch.allclose(after.mean, 3 * before.mean, atol=1e-4)
    assert torch.allclose(after.std, 3 * before.std, rtol=1e-4)
    assert torch.allclose(reconstruct(vae, pictures), reconstruct(tiny.vae, pictures), atol=1e-4)


def test_the_fit_starts_from_an_8x8_pooling_autoencoder() -> None:
    picture = photo_like(64)[None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)  # as the fit does; the weights the start leaves random add a little error
        vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    init_as_pooling_autoencoder(vae)
    with torch.no_grad():
        latents = vae.encode(picture).latent_dist.mean
        decoded = vae.decode(latents).sample
    blocks = torch.nn.functional.avg_pool2d(picture, 8)
    assert torch.allclose(latents[:, :3], blocks, atol=0.02)
    assert torch.allclose(decoded, torch.nn.functional.interpolate(blocks, scale_factor=8.0), atol=0.05)
    with pytest.raises(ValueError, match="norm_num_groups=1"):
        init_as_pooling_autoencoder(AutoencoderKL(**{**TINY_VAE_CONFIG, "norm_num_groups": 4}))


@pytest.mark.slow
def test_the_fit_is_reproducible_and_leaves_torch_settings_alone() -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(99)
    expected = torch.rand(2)
    torch.manual_seed(99)
    first = fit_tiny_vae(steps=2, log=lambda line: None)
    assert torch.equal(torch.rand(2), expected)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic
    second = fit_tiny_vae(steps=2, log=lambda line: None)
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # even two steps from the pooling start reconstruct colour
    picture = photo_like(128)[None]
    assert correlation(picture, reconstruct(first, picture)) > 0.9


def _pil(picture: torch.Tensor) -> Image.Image:
    return Image.fromarray(((picture.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))


def img2img_resemblance(tiny: StableDiffusionPipeline, seed: int, steps: int = 10) -> dict[str, float]:
    """Correlation with the input of the real img2img pipeline's output at strength 0.35 and 0.75, and of an
    unrelated text-to-image result (the baseline any output reaches by chance)."""
    source = photo_like()
    img2img = StableDiffusionImg2ImgPipeline(**tiny.components, requires_safety_checker=False)  # shares the weights
    img2img.set_progress_bar_config(disable=True)
    scores = {}
    for strength in (0.35, 0.75):
        out = img2img("a house by a tree", image=_pil(source), strength=strength, num_inference_steps=steps,
                      generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
        scores[f"strength {strength}"] = correlation(source, out.transpose(2, 0, 1) * 2 - 1)
    unrelated = tiny("a house by a tree", num_inference_steps=steps, width=256, height=256,
                     generator=torch.Generator().manual_seed(seed + 1000), output_type="np").images[0]
    scores["unrelated"] = correlation(source, unrelated.transpose(2, 0, 1) * 2 - 1)
    return scores


@pytest.mark.parametrize("seed", [1, 2])
def test_img2img_resembles_its_input_more_at_low_strength(tiny: StableDiffusionPipeline, seed: int) -> None:
    scores = img2img_resemblance(tiny, seed)
    assert scores["strength 0.35"] > scores["strength 0.75"], scores
    assert scores["strength 0.35"] > 0.5 and scores["strength 0.35"] > scores["unrelated"] + 0.3, scores
