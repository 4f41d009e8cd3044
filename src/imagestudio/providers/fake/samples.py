"""Generated product-like photos, used by the demo and the tests as source images.

``sample_product_photo(index, label)`` draws a coloured object on a light studio background
with a soft shadow and the label printed on it. Each index gives a different colour and
shape, so results can be told apart at a glance. Pure Pillow, no files, no network.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFilter, ImageFont

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]

_GOLDEN = 0.618033988749895


def _colour(index: int, saturation: float = 0.65, value: float = 0.85) -> RGB:
    hue = (index * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = (max(0, min(255, round(c * factor))) for c in colour)
    return (r, g, b)


def _background(size: tuple[int, int]) -> Image.Image:
    """A light vertical studio gradient."""
    width, height = size
    strip = Image.new("RGB", (1, 256))
    for y in range(256):
        level = 250 - y // 12
        strip.putpixel((0, y), (level, level, min(255, level + 3)))
    return strip.resize((width, height), Image.Resampling.BILINEAR)


def _box(draw: ImageDraw.ImageDraw, box: Box, fill: RGB, scale: int) -> None:
    draw.rounded_rectangle(box, radius=max(4, scale // 10), fill=fill)


def _bottle(draw: ImageDraw.ImageDraw, box: Box, fill: RGB, scale: int) -> None:
    x0, y0, x1, y1 = box
    neck = (x1 - x0) // 4
    cx = (x0 + x1) // 2
    draw.rounded_rectangle((cx - neck // 2, y0, cx + neck // 2, y0 + scale // 4), 4, fill=fill)
    draw.rounded_rectangle((x0, y0 + scale // 5, x1, y1), radius=scale // 6, fill=fill)


def _round(draw: ImageDraw.ImageDraw, box: Box, fill: RGB, scale: int) -> None:
    draw.ellipse(box, fill=fill)
    del scale


def _bag(draw: ImageDraw.ImageDraw, box: Box, fill: RGB, scale: int) -> None:
    x0, y0, x1, y1 = box
    handle = (x0 + (x1 - x0) // 4, y0, x1 - (x1 - x0) // 4, y0 + scale // 2)
    draw.arc(handle, 180, 360, fill=_shade(fill, 0.6), width=max(3, scale // 25))
    draw.polygon([(x0, y1), (x1, y1), (x1 - scale // 12, y0 + scale // 4),
                  (x0 + scale // 12, y0 + scale // 4)], fill=fill)  # fmt: skip


_SHAPES: tuple[Callable[[ImageDraw.ImageDraw, Box, RGB, int], None], ...] = (
    _box,
    _bottle,
    _round,
    _bag,
)


def _shadow(size: tuple[int, int], box: Box) -> Image.Image:
    """A blurred ellipse under the object, as a mask."""
    mask = Image.new("L", size, 0)
    x0, _, x1, y1 = box
    pad = (x1 - x0) // 10
    ImageDraw.Draw(mask).ellipse((x0 - pad, y1 - pad, x1 + pad, y1 + pad * 2), fill=110)
    return mask.filter(ImageFilter.GaussianBlur(max(2, (x1 - x0) // 12)))


def load_font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``px`` pixels, or its bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=max(8, px))
    except (OSError, TypeError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, box: Box, label: str, colour: RGB) -> None:
    x0, y0, x1, y1 = box
    font = load_font((x1 - x0) // 9)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2 + (y1 - y0) // 8
    text = label[:24]
    left, top, right, bottom = draw.textbbox((cx, cy), text, font=font, anchor="mm")
    draw.rounded_rectangle((left - 8, top - 6, right + 8, bottom + 6), radius=6, fill=(250,) * 3)
    draw.text((cx, cy), text, font=font, fill=_shade(colour, 0.45), anchor="mm")


def sample_product_photo(index: int, label: str, size: tuple[int, int] = (800, 800)) -> bytes:
    """A JPEG of a product-like object, distinct per ``index``, with ``label`` printed on it."""
    width, height = size
    image = _background(size)
    scale = min(width, height) // 2
    cx, cy = width // 2, height // 2
    box = (cx - scale // 2, cy - scale // 2, cx + scale // 2, cy + scale // 2 + scale // 8)
    image.paste((150, 150, 160), (0, 0), _shadow(size, box))
    draw = ImageDraw.Draw(image)
    colour = _colour(index)
    _SHAPES[index % len(_SHAPES)](draw, box, colour, scale)
    highlight = (
        box[0] + scale // 10,
        box[1] + scale // 4,
        box[0] + scale // 5,
        box[3] - scale // 6,
    )
    draw.rounded_rectangle(highlight, radius=scale // 20, fill=_shade(colour, 1.25))
    _label(draw, box, label, colour)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()
