"""The results picture: the podium's images side by side, each captioned with place, author and votes.

One picture instead of three attachments so the winners read at a glance on a phone. Drawn with Pillow only;
DejaVu Sans is used when the system (or the package) has it, otherwise Pillow's bundled default font.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

TILE = 384
GAP = 16
CAPTION_HEIGHT = 72
BACKGROUND = (32, 34, 37)
CAPTION_TEXT = (255, 255, 255)
VOTES_TEXT = (185, 187, 190)
PLACE_COLOURS = {1: (255, 196, 0), 2: (192, 192, 200), 3: (205, 127, 50)}
MEDALS = {1: "1st", 2: "2nd", 3: "3rd"}

_FONT_CANDIDATES = (
    Path(__file__).with_name("fonts") / "DejaVuSans.ttf",
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
    Path("/usr/local/share/fonts/DejaVuSans.ttf"),
)


@dataclass(frozen=True)
class PodiumEntry:
    """What one tile shows; ``image`` is the PNG bytes (None when the file was pruned: a placeholder is drawn)."""

    place: int
    author: str
    votes: int
    image: bytes | None


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for candidate in _FONT_CANDIDATES:
        if candidate.is_file():
            try:
                return ImageFont.truetype(str(candidate), size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _tile(png: bytes | None) -> Image.Image:
    """The entry's image letterboxed into a square tile (any aspect ratio, never distorted)."""
    if png is None:
        tile = Image.new("RGB", (TILE, TILE), (64, 66, 70))
        draw = ImageDraw.Draw(tile)
        draw.text((TILE // 2, TILE // 2), "image unavailable", font=_font(20), fill=VOTES_TEXT, anchor="mm")
        return tile
    with Image.open(io.BytesIO(png)) as source:
        image = source.convert("RGB")
    return ImageOps.pad(image, (TILE, TILE), method=Image.Resampling.LANCZOS, color=BACKGROUND)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
         width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels (long display names)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_results(entries: Sequence[PodiumEntry]) -> bytes:
    """A PNG with up to three tiles in podium order (1st, 2nd, 3rd from the left) and their captions."""
    podium = sorted(entries, key=lambda e: e.place)[:3]
    if not podium:
        raise ValueError("a results picture needs at least one entry")
    count = len(podium)
    width = GAP + count * (TILE + GAP)
    height = GAP + TILE + CAPTION_HEIGHT + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    title_font, detail_font = _font(24), _font(18)
    for i, entry in enumerate(podium):
        left = GAP + i * (TILE + GAP)
        colour = PLACE_COLOURS.get(entry.place, CAPTION_TEXT)
        canvas.paste(_tile(entry.image), (left, GAP))
        draw.rectangle((left - 3, GAP - 3, left + TILE + 2, GAP + TILE + 2), outline=colour, width=3)
        medal = MEDALS.get(entry.place, f"#{entry.place}")
        caption = _fit(draw, f"{medal}  {entry.author}", title_font, TILE - 8)
        draw.text((left + 4, GAP + TILE + 10), caption, font=title_font, fill=colour)
        votes = f"{entry.votes} vote{'' if entry.votes == 1 else 's'}"
        draw.text((left + 4, GAP + TILE + 42), votes, font=detail_font, fill=VOTES_TEXT)
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=False)
    return out.getvalue()
