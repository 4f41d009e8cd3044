"""The images a fake provider answers with: edits and generations drawn with Pillow (pure).

An edit is the source cropped to the asked size, posterized, tinted by a colour taken from the
prompt, framed and stamped with the start of the prompt; a generation is the same treatment of
a sample photo (``samples.py``) chosen by the prompt. ``fit_long_side`` is where
``FakeProviderConfig.render_size`` shrinks what is drawn.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from imagestudio.providers.fake.config import MIN_SIDE
from imagestudio.providers.fake.samples import load_font, sample_product_photo

SAMPLE_SIZE = (800, 800)  # the /samples photos, unless render_size says otherwise
_SAMPLE_CACHE_BYTES = 64 * 1024 * 1024


def fit_long_side(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """``size`` scaled to ``long_side`` pixels on its longer side (aspect kept); None: as is."""
    if long_side is None:
        return size
    width, height = size
    scale = long_side / max(width, height, 1)
    return (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))


def _tint(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return (digest[0] // 2 + 64, digest[1] // 2 + 64, digest[2] // 2 + 64)


def _encode(image: Image.Image, output_format: str) -> bytes:
    out = io.BytesIO()
    if output_format in ("jpeg", "jpg"):
        image.convert("RGB").save(out, format="JPEG", quality=90)
    elif output_format == "webp":
        image.save(out, format="WEBP", quality=85)
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _stamp(image: Image.Image, prompt: str, colour: tuple[int, int, int]) -> None:
    """A frame in the prompt's colour and the start of the prompt on a dark band."""
    width, height = image.size
    draw = ImageDraw.Draw(image)
    border = max(3, min(width, height) // 40)
    draw.rectangle((0, 0, width - 1, height - 1), outline=colour, width=border)
    band = max(14, height // 14)
    draw.rectangle(
        (border, height - border - band, width - border, height - border), fill=(20, 20, 28)
    )
    text = prompt.strip().replace("\n", " ")
    text = text if len(text) <= 48 else text[:47] + "…"
    draw.text(
        (border + band // 3, height - border - band // 2),
        text,
        font=load_font(band * 3 // 5),
        fill=(255, 255, 255),
        anchor="lm",
    )


def render_edit(source: bytes, prompt: str, size: tuple[int, int], output_format: str) -> bytes:
    """The source, cropped to ``size``, posterized, tinted, framed and stamped with the prompt."""
    with Image.open(io.BytesIO(source)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image = ImageOps.fit(image, size, Image.Resampling.BILINEAR)
    colour = _tint(prompt)
    image = Image.blend(ImageOps.posterize(image, 3), Image.new("RGB", size, colour), 0.25)
    _stamp(image, prompt, colour)
    return _encode(image, output_format)


def render_generation(prompt: str, size: tuple[int, int], output_format: str) -> bytes:
    """An image "generated" from the prompt: a sample photo chosen by it, stylized."""
    index = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    source = sample_product_photo(index, "generated", size)
    return render_edit(source, prompt, size, output_format)


def render(source: bytes | None, prompt: str, size: tuple[int, int], output_format: str) -> bytes:
    """An edit of ``source``, or a generation without one."""
    if source is not None:
        return render_edit(source, prompt, size, output_format)
    return render_generation(prompt, size, output_format)


def chat_size(source: bytes, long_side: int = 1024) -> tuple[int, int]:
    """Chat image models keep the source's aspect ratio: ``long_side`` on its longer side."""
    try:
        with Image.open(io.BytesIO(source)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return (long_side, long_side)
    return fit_long_side((width, height), long_side)


def check_image(data: bytes) -> bool:
    """True if Pillow recognizes the bytes as an image (header only, cheap)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width > 0 and image.height > 0
    except (UnidentifiedImageError, OSError, ValueError):
        return False


class SampleCache:
    """The ``/samples`` photos drawn so far, by (index, size), up to a byte budget (oldest out).

    The photos are pure functions of their key, so this only saves drawing them again.
    """

    def __init__(self, max_bytes: int = _SAMPLE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._photos: OrderedDict[tuple[int, tuple[int, int]], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, index: int, size: tuple[int, int]) -> bytes | None:
        photo = self._photos.get((index, size))
        if photo is not None:
            self._photos.move_to_end((index, size))
        return photo

    def put(self, index: int, size: tuple[int, int], photo: bytes) -> None:
        old = self._photos.pop((index, size), None)
        self._bytes += len(photo) - (len(old) if old is not None else 0)
        self._photos[(index, size)] = photo
        while self._bytes > self.max_bytes and self._photos:
            _, dropped = self._photos.popitem(last=False)
            self._bytes -= len(dropped)


def sample_photo(index: int, size: tuple[int, int]) -> bytes:
    """The ``/samples/{index}.jpg`` photo at ``size``."""
    return sample_product_photo(index, f"SKU sample {index}", size)
