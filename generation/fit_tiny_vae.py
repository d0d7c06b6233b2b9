"""Fit ``tiny``'s autoencoder on synthetic pictures and write the weights the package ships.

A random-weight VAE turns every picture into noise, so nothing built on img2img (Upscale, Vary, image input) could
be tested for resemblance with ``tiny``. This script fits the exact ``TINY_VAE_CONFIG`` architecture to
reconstruct deterministic synthetic pictures (gradients, colour fields, rectangles, circles, lines, triangles,
stripes and checkers with soft or hard edges): it starts from weights that make it an 8x8 pooling autoencoder
(see :func:`init_as_pooling_autoencoder`), fine-tunes them with MSE + L1 on posterior samples, then rescales the
latents to SD's ``scaling_factor``. Regenerate the shipped file with::

    python -m generation.fit_tiny_vae

It takes about 5.5 minutes of CPU time (800 steps; measured 328 s of CPU, 21 minutes of wall time on a shared,
overloaded two-core machine).

Everything is seeded and runs on one CPU thread (the thread count changes the order of float sums, and one thread
is also the fastest on a busy two-core machine), so the same torch build on the same kind of CPU writes the same
bytes; another CPU or torch version gives an equivalent, not bit-identical, file.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from safetensors.torch import save_file

from generation.tiny import TINY_SEED, TINY_VAE_CONFIG, TINY_VAE_WEIGHTS

FIT_SEED = 1205
FIT_THREADS = 1
FIT_STEPS = 800
FIT_BATCH = 16
FIT_SIZE = 64
# Mostly 64-pixel crops at the pixel scale of a 256-pixel scene, some whole small scenes for finer detail.
FIT_EXTENTS = (0.25, 0.25, 0.5, 1.0)
LEARNING_RATE = 2e-4  # fine-tuning from the pooling start: larger steps first wreck it (measured at 1e-3)
# Tiny next to the reconstruction loss: keeps the latent scale and the posterior variance tame (as in SD's own VAE
# training) without blurring. Training on posterior samples makes the decoder robust to img2img's sample().
KL_WEIGHT = 1e-6
# The latents are rescaled after fitting so that, like SD's, they have std 1/scaling_factor on the training
# pictures: scaling_factor * latent then has unit variance, which the noise schedule assumes.
LATENT_STATS_PICTURES = 64
LATENT_STATS_SIZE = 256


# --------------------------------------------------------------------------- synthetic pictures


def _uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0, shape: tuple[int, ...] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _colour(gen: torch.Generator) -> torch.Tensor:
    return torch.rand(3, 1, 1, generator=gen)


def _soft_inside(signed_distance: torch.Tensor, softness: torch.Tensor) -> torch.Tensor:
    """1 inside (negative distance), 0 outside, with an edge ``softness`` wide (anti-aliased to blurry)."""
    return torch.sigmoid(-signed_distance / softness)


def _background(gen: torch.Generator, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    kind = int(torch.randint(0, 4, (), generator=gen))
    if kind == 0:  # flat colour
        return _colour(gen).expand(3, *ys.shape).clone()
    if kind == 1:  # linear gradient across the scene at any angle
        angle = _uniform(gen, 0, 2 * math.pi)
        cos, sin = torch.cos(angle), torch.sin(angle)
        t = 0.5 + ((xs - 0.5) * cos + (ys - 0.5) * sin) / (cos.abs() + sin.abs())
        start, end = _colour(gen), _colour(gen)
        return start + t * (end - start)
    if kind == 2:  # radial gradient
        cy, cx, radius = _uniform(gen), _uniform(gen), _uniform(gen, 0.3, 1.2)
        t = (((ys - cy) ** 2 + (xs - cx) ** 2).sqrt() / radius).clamp(0, 1)
        inner, outer = _colour(gen), _colour(gen)
        return inner + t * (outer - inner)
    cells = int(torch.randint(2, 6, (), generator=gen))  # smooth colour field: a few colours blended bicubically
    field = torch.rand(1, 3, cells, cells, generator=gen)
    grid = torch.stack([xs, ys], dim=-1)[None] * 2 - 1
    return F.grid_sample(field, grid, mode="bicubic", align_corners=True)[0]


def _texture(gen: torch.Generator, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """A periodic pattern in [-1, 1]: stripes, a plaid or a checkerboard, 2 to 16 periods across the scene."""
    angle = _uniform(gen, 0, math.pi)
    periods = _uniform(gen, 2, 16)
    u = (xs * torch.cos(angle) + ys * torch.sin(angle)) * periods * 2 * math.pi
    v = (-xs * torch.sin(angle) + ys * torch.cos(angle)) * periods * 2 * math.pi
    kind = int(torch.randint(0, 3, (), generator=gen))
    if kind == 0:
        return torch.sin(u)
    if kind == 1:
        return 0.5 * (torch.sin(u) + torch.sin(v))
    return torch.sign(torch.sin(u) * torch.sin(v))


def _shape_distance(gen: torch.Generator, ys: torch.Tensor, xs: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Signed distance (in scene units) to a random rectangle, ellipse, thick line or triangle around ``centre``."""
    kind = int(torch.randint(0, 4, (), generator=gen))
    cy, cx = centre
    if kind == 0:  # rectangle, sometimes rotated
        half_h, half_w = _uniform(gen, 0.04, 0.35), _uniform(gen, 0.04, 0.35)
        angle = _uniform(gen, 0, math.pi) if bool(torch.rand((), generator=gen) < 0.4) else torch.tensor(0.0)
        dy, dx = ys - cy, xs - cx
        ry = dy * torch.cos(angle) - dx * torch.sin(angle)
        rx = dy * torch.sin(angle) + dx * torch.cos(angle)
        return torch.maximum(ry.abs() - half_h, rx.abs() - half_w)
    if kind == 1:  # circle or ellipse
        ry, rx = _uniform(gen, 0.04, 0.35), _uniform(gen, 0.04, 0.35)
        if bool(torch.rand((), generator=gen) < 0.5):
            rx = ry
        return (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2).sqrt().sub(1) * torch.minimum(ry, rx)
    if kind == 2:  # thick line segment
        angle, length = _uniform(gen, 0, math.pi), _uniform(gen, 0.2, 1.0)
        width = _uniform(gen, 0.01, 0.06)
        dy, dx = ys - cy, xs - cx
        along = (dx * torch.cos(angle) + dy * torch.sin(angle)).clamp(-length / 2, length / 2)
        return ((dx - along * torch.cos(angle)) ** 2 + (dy - along * torch.sin(angle)) ** 2).sqrt() - width
    corners = torch.rand(3, 2, generator=gen) * 0.8 + centre - 0.4  # triangle
    if float((corners[1, 0] - corners[0, 0]) * (corners[2, 1] - corners[0, 1])
             - (corners[1, 1] - corners[0, 1]) * (corners[2, 0] - corners[0, 0])) < 0:
        corners = corners.flip(0)
    distance = torch.full_like(ys, -1e3)
    for i in range(3):
        (ay, ax), (by, bx) = corners[i], corners[(i + 1) % 3]
        edge = torch.stack([by - ay, bx - ax])
        normal = torch.stack([-edge[1], edge[0]]) / (edge.norm() + 1e-6)  # points outwards for this winding
        distance = torch.maximum(distance, (ys - ay) * normal[0] + (xs - ax) * normal[1])
    return distance


def synthetic_picture(size: int, gen: torch.Generator, extent: float = 1.0) -> torch.Tensor:
    """One ``(3, size, size)`` picture in [-1, 1], fully determined by ``gen``'s state: a window covering
    ``extent`` of a scene's width (1.0: the whole scene, 0.25: a quarter, i.e. a crop at 4x the pixel scale)."""
    origin = _uniform(gen, 0, 1 - extent, (2,))
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) / size * extent
    ys, xs = torch.meshgrid(origin[0] + steps, origin[1] + steps, indexing="ij")
    pixel = extent / size
    picture = _background(gen, ys, xs)
    if bool(torch.rand((), generator=gen) < 0.35):  # a textured layer over the background
        picture = picture + _uniform(gen, 0.05, 0.4) * _texture(gen, ys, xs) * (_colour(gen) - 0.3)
    for _ in range(int(torch.randint(0, 8, (), generator=gen))):
        softness = _uniform(gen, 0.3, 3.0) * pixel
        centre = origin + extent * _uniform(gen, -0.1, 1.1, (2,))  # around the window, so crops show shapes too
        inside = _soft_inside(_shape_distance(gen, ys, xs, centre), softness)
        fill = _colour(gen)
        if bool(torch.rand((), generator=gen) < 0.3):  # a shaded or textured fill instead of a flat one
            fill = fill + 0.3 * (_texture(gen, ys, xs) if bool(torch.rand((), generator=gen) < 0.5)
                                 else (ys - centre[0]) * 2) * (_colour(gen) - 0.5)
        picture = picture + inside * (fill - picture)
    return (picture.clamp(0, 1) * 2 - 1).contiguous()


def synthetic_batch(count: int, size: int, gen: torch.Generator, extents: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """``count`` pictures, each a window of a random one of ``extents``."""
    return torch.stack([synthetic_picture(size, gen, extents[int(torch.randint(0, len(extents), (), generator=gen))])
                        for _ in range(count)])


# --------------------------------------------------------------------------- a pooling autoencoder to start from

# Trunk channels the initial weights carry: the picture's colours, minus their sum, and a constant.
_RGB, _MINUS_SUM, _REFERENCE = [0, 1, 2], 3, 4
REFERENCE_LEVEL = 30.0
SILU_SHIFT = 8.0  # silu(x + 8) - 8 is x within 0.7% on [-1, 1]
INITIAL_LOGVAR = -10.0


def _identity_taps(conv: torch.nn.Conv2d, rows: list[int] | None = None) -> None:
    """Make output channel c copy input channel c through the centre tap (no zero padding reaches it); rows past
    the input channels become zero."""
    rows = list(range(conv.out_channels)) if rows is None else rows
    centre = conv.kernel_size[0] // 2
    conv.weight[rows] = 0
    for c in rows:
        if c < conv.in_channels:
            conv.weight[c, c, centre, centre] = 1
    conv.bias[rows] = 0


def _colour_carrying_input(conv: torch.nn.Conv2d, trunk: int) -> None:
    """Rows for the red, green, blue and constant trunk channels, plus one channel that makes the first ``trunk``
    channels (those reaching the last GroupNorm) sum to the constant; the other rows keep their random values."""
    _identity_taps(conv, _RGB + [_MINUS_SUM, _REFERENCE])
    conv.bias[_REFERENCE] = REFERENCE_LEVEL
    others = [c for c in range(trunk) if c not in (_MINUS_SUM, _REFERENCE)]
    conv.weight[_MINUS_SUM] = -conv.weight[others].sum(dim=0)
    conv.bias[_MINUS_SUM] = -conv.bias[others].sum()


def _near_identity_group_norm(norm: torch.nn.GroupNorm) -> None:
    """With one group, the trunk's channel sum is the constant: the mean is fixed and the spread is (almost)
    fixed, so GroupNorm becomes an affine map; the weights undo it and shift the colours into silu's linear part."""
    channels = norm.num_channels
    spread = math.sqrt(REFERENCE_LEVEL ** 2 * (channels - 1)) / channels
    norm.weight.zero_()
    norm.bias.zero_()
    norm.weight[_RGB] = spread
    norm.bias[_RGB] = REFERENCE_LEVEL / channels + SILU_SHIFT


def _colour_output(conv: torch.nn.Conv2d) -> None:
    _identity_taps(conv, _RGB)
    conv.bias[_RGB] = -SILU_SHIFT


def init_as_pooling_autoencoder(vae: AutoencoderKL) -> None:
    """Set the weights so encode is an 8x8 average of the colours and decode repeats each latent pixel 8x8.

    From its random init this small VAE learns slowly: after 400 steps pictures still came back greyish
    (held-out correlation about 0.6; GroupNorm strips each picture's mean and contrast, which colour has to get
    around). From this start (residual branches and attention outputs zero, a constant trunk channel keeping
    GroupNorm affine) it reconstructs colour from step one (correlation about 0.98) and fitting adds detail.
    Weights the identity path does not need keep their random values, so the fourth latent channel and the
    residual branches can learn.
    """
    if vae.config.norm_num_groups != 1:
        raise ValueError("the pooling start needs norm_num_groups=1 (one GroupNorm group sees the constant channel)")
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, ResnetBlock2D):
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
                if module.conv_shortcut is not None:
                    _identity_taps(module.conv_shortcut)
            elif isinstance(module, Attention):
                module.to_out[0].weight.zero_()
                module.to_out[0].bias.zero_()
            elif isinstance(module, Downsample2D):  # padded right/bottom, so the top-left 2x2 taps average a block
                module.conv.weight.zero_()
                module.conv.bias.zero_()
                for c in range(module.conv.out_channels):
                    module.conv.weight[c, c, :2, :2] = 0.25
            elif isinstance(module, Upsample2D):
                _identity_taps(module.conv)
        trunk = vae.config.block_out_channels[0]
        _colour_carrying_input(vae.encoder.conv_in, trunk)
        _colour_carrying_input(vae.decoder.conv_in, trunk)
        for end in (vae.encoder, vae.decoder):
            _near_identity_group_norm(end.conv_norm_out)
            _colour_output(end.conv_out)
        _identity_taps(vae.quant_conv, list(range(vae.config.latent_channels)))
        logvar = list(range(vae.config.latent_channels, 2 * vae.config.latent_channels))
        vae.quant_conv.weight[logvar] = 0
        vae.quant_conv.bias[logvar] = INITIAL_LOGVAR
        _identity_taps(vae.post_quant_conv)


# --------------------------------------------------------------------------- fitting


def rescale_latents(vae: AutoencoderKL, factor: float) -> None:
    """Multiply the latent space by ``factor`` exactly: the encoder's mean (and std) by ``factor``, the decoder's
    first 1x1 convolution by ``1/factor``; decode(encode(x)) is unchanged."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[:channels] *= factor
        vae.quant_conv.bias[:channels] *= factor
        vae.quant_conv.bias[channels:] += 2 * math.log(factor)  # log-variance
        vae.post_quant_conv.weight /= factor


def latent_std(vae: AutoencoderKL, pictures: torch.Tensor) -> float:
    """Std of the posterior means over ``pictures``, the statistic SD's 0.18215 was derived from."""
    with torch.no_grad():
        return float(torch.cat([vae.encode(p[None]).latent_dist.mean for p in pictures]).std())


@contextmanager
def _reproducible_torch() -> Iterator[None]:
    """Fixed thread count, deterministic kernels and a private global RNG; the caller's settings come back after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(FIT_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _learning_rate_factor(step: int, steps: int) -> float:
    """Linear warm-up (Adam's first steps are the largest), then cosine decay to 2% of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


def fit_tiny_vae(steps: int = FIT_STEPS, log: Callable[[str], None] = print) -> AutoencoderKL:
    """Fit the ``tiny`` VAE from the pooling start and rescale its latents to SD's convention."""
    with _reproducible_torch():
        torch.manual_seed(TINY_SEED)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        init_as_pooling_autoencoder(vae)
        vae.train()
        pictures = torch.Generator().manual_seed(FIT_SEED)
        noise = torch.Generator().manual_seed(FIT_SEED + 1)
        optimizer = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate_factor(step, steps))
        started = time.perf_counter()
        for step in range(1, steps + 1):
            batch = synthetic_batch(FIT_BATCH, FIT_SIZE, pictures, FIT_EXTENTS)
            posterior = vae.encode(batch).latent_dist
            decoded = vae.decode(posterior.sample(noise)).sample
            mse = F.mse_loss(decoded, batch)
            loss = mse + 0.5 * F.l1_loss(decoded, batch) + KL_WEIGHT * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 100 == 0 or step == steps:
                log(f"step {step}/{steps}  mse {mse.item():.4f}  posterior std {posterior.std.mean().item():.4f}  "
                    f"{time.perf_counter() - started:.0f}s")
        vae.eval()
        stats = synthetic_batch(LATENT_STATS_PICTURES, LATENT_STATS_SIZE,
                                torch.Generator().manual_seed(FIT_SEED + 2))
        std = latent_std(vae, stats)
        scaling = TINY_VAE_CONFIG["scaling_factor"]
        rescale_latents(vae, 1 / (scaling * std))
        log(f"latent std {std:.4f} rescaled to {latent_std(vae, stats):.4f} = 1/{scaling} (scaling_factor)")
    return vae


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit tiny's VAE on synthetic pictures and save its weights.")
    parser.add_argument("--steps", type=int, default=FIT_STEPS)
    parser.add_argument("--out", type=Path, default=TINY_VAE_WEIGHTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    vae = fit_tiny_vae(args.steps, log=lambda line: print(line, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # no metadata: safetensors writes its keys in random order, and the file must come out byte-identical
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
