"""The results picture: one image, three tiles wide, with captions actually drawn under each tile."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.contests import picture
from bot.contests.picture import PodiumEntry, render_results


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _region_differs(image: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> bool:
    region = image.crop(box).convert("RGB")
    return any(pixel != colour for pixel in region.getdata())


def test_three_entries_make_one_picture_with_captions() -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    entries = [PodiumEntry(place=i + 1, author=f"member{i}", votes=3 - i, image=_png(c)) for i, c in enumerate(colours)]
    with Image.open(io.BytesIO(render_results(list(reversed(entries))))) as image:
        image.load()
    tile, gap = picture.TILE, picture.GAP
    assert image.width == pytest.approx(3 * tile, rel=0.1)
    assert image.height > tile
    for i, colour in enumerate(colours):  # podium order left to right, whatever order they came in
        left = gap + i * (tile + gap)
        centre = image.getpixel((left + tile // 2, gap + tile // 2))
        assert centre == colour
        caption = (left, gap + tile + 4, left + tile, gap + tile + picture.CAPTION_HEIGHT)
        assert _region_differs(image, caption, picture.BACKGROUND), f"no caption under tile {i + 1}"
    # the gap between tiles stays background
    assert not _region_differs(image, (gap + tile + 4, gap + 10, gap + tile + gap - 4, gap + 20), picture.BACKGROUND)


def test_non_square_and_missing_images_and_fewer_entries() -> None:
    entries = [PodiumEntry(1, "a" * 200, 1, _png((255, 0, 0), (128, 32))), PodiumEntry(2, "b", 0, None)]
    with Image.open(io.BytesIO(render_results(entries))) as image:
        assert image.width == picture.GAP + 2 * (picture.TILE + picture.GAP)


def test_more_than_three_entries_keeps_the_podium() -> None:
    entries = [PodiumEntry(p, f"m{p}", 10 - p, _png((p * 40, 0, 0))) for p in (5, 4, 3, 2, 1)]
    with Image.open(io.BytesIO(render_results(entries))) as image:
        assert image.width == picture.GAP + 3 * (picture.TILE + picture.GAP)


def test_no_entries_is_an_error() -> None:
    with pytest.raises(ValueError):
        render_results([])
