"""Pure image transforms: sniff, validate a source, post-process a provider's output.

Everything here is CPU-bound bytes -> bytes with no I/O; callers run it in worker processes
(``imaging.pool``), or in threads. Pillow errors are mapped to ``BadImage`` (cannot decode) and
``SourceTooLarge`` (over the pixel cap, checked from the header before pixels are decoded).

Fit rule, "contain on white": the image is scaled (LANCZOS) to fit inside the target keeping
its aspect ratio, then centred on a white canvas of exactly the target size, so nothing of the
product is cropped. JPEG flattens transparency onto white. PNG and WebP keep an alpha channel
only when the decoded image had one; then the margins are transparent white.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import PurePosixPath

from PIL import Image, ImageOps

from imagestudio.domain import OutputSpec, SourceFile
from imagestudio.errors import BadImage, SourceTooLarge

_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", "png"),
    (b"\xff\xd8\xff", 0, "image/jpeg", "jpg"),
    (b"GIF87a", 0, "image/gif", "gif"),
    (b"GIF89a", 0, "image/gif", "gif"),
    (b"II*\x00", 0, "image/tiff", "tiff"),
    (b"MM\x00*", 0, "image/tiff", "tiff"),
    (b"BM", 0, "image/bmp", "bmp"),
)
_PASS_THROUGH_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
_ORIENTATION_TAG = 0x0112
_WHITE = (255, 255, 255)
# What Pillow's decoders raise on hostile or broken input.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, struct.error)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def sniff(data: bytes) -> tuple[str, str]:
    """The MIME type and file extension of ``data`` from its magic bytes, else ``BadImage``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    for magic, offset, mime, ext in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return mime, ext
    raise BadImage("not a supported image (png, jpeg, webp, gif, bmp or tiff)")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and enforce the pixel cap before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
    except _BOMB_ERRORS as exc:
        raise SourceTooLarge(f"image is too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise BadImage(f"cannot decode image: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise SourceTooLarge(f"image is {width}x{height} pixels, over the cap of {max_pixels}")
    return image


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except _BOMB_ERRORS as exc:
        raise SourceTooLarge(f"image is too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise BadImage(f"cannot decode image: {exc}") from exc


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height as stored in the header (EXIF orientation not applied)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except _BOMB_ERRORS as exc:
        raise SourceTooLarge(f"image is too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise BadImage(f"cannot decode image: {exc}") from exc


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) else 1


def _has_alpha(image: Image.Image) -> bool:
    return bool(image.has_transparency_data)


_EXT_ALIASES = {"jpg": {"jpg", "jpeg"}, "tiff": {"tiff", "tif"}}


def with_extension(filename: str, ext: str) -> str:
    """``filename`` (its last path segment) ending in ``ext``: kept, or its suffix replaced."""
    name = PurePosixPath(filename.replace("\\", "/")).name or "source"
    path = PurePosixPath(name)
    suffix = path.suffix.lower().lstrip(".")
    if suffix in _EXT_ALIASES.get(ext, {ext}):
        return name
    return f"{path.stem or 'source'}.{ext}"


def _to_png(image: Image.Image) -> bytes:
    upright = ImageOps.exif_transpose(image)
    if upright.mode not in ("RGB", "RGBA", "L", "LA"):
        upright = upright.convert("RGBA" if _has_alpha(upright) else "RGB")
    buffer = io.BytesIO()
    upright.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def prepare_source(data: bytes, filename: str, *, max_pixels: int) -> SourceFile:
    """Validate a downloaded source and make it uploadable.

    PNG, JPEG and WebP in their stored orientation are passed through byte for byte. Other
    formats (GIF, BMP, TIFF: first frame), rotated EXIF orientations and CMYK images are
    re-encoded to an upright PNG.
    """
    mime, ext = sniff(data)
    image = _open(data, max_pixels)
    with image:
        _load(image)
        rewrite = (
            image.format not in _PASS_THROUGH_FORMATS
            or _orientation(image) != 1
            or image.mode == "CMYK"
        )
        if not rewrite:
            return SourceFile(data=data, filename=with_extension(filename, ext), mime=mime)
        png = _to_png(image)
    return SourceFile(data=png, filename=with_extension(filename, "png"), mime="image/png")


def _fit(image: Image.Image, width: int, height: int) -> tuple[Image.Image, bool]:
    """Scale ``image`` to fit inside width x height, in RGB or RGBA; True if it has alpha."""
    alpha = _has_alpha(image)
    image = image.convert("RGBA" if alpha else "RGB")
    scale = min(width / image.width, height / image.height)
    size = (
        min(width, max(1, round(image.width * scale))),
        min(height, max(1, round(image.height * scale))),
    )
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    return image, alpha


# Far downscales first ``reduce()`` by an integer factor (a box filter, cheap), leaving at least
# this much for LANCZOS: Pillow's docs call 3.0 indistinguishable from a plain LANCZOS resize.
# 1536 px -> 64 px takes half the CPU (docs/benchmarks.md, "Post-processing on every core").
REDUCING_GAP = 3.0
_TRANSPOSED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def _draft(image: Image.Image, spec: OutputSpec) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while it still covers the target (DCT
    scaling, as ``Image.thumbnail`` does): a 1536 px answer to 512 px takes 45% of the CPU, to
    64 px 5%. No effect on other formats, nor when the target needs full resolution."""
    if image.format != "JPEG":
        return
    size = (
        (spec.height, spec.width)
        if _orientation(image) in _TRANSPOSED
        else (spec.width, spec.height)
    )
    image.draft(image.mode, size)


def _canvas(image: Image.Image, spec: OutputSpec, alpha: bool) -> Image.Image:
    """Centre ``image`` on a spec-sized canvas: white, or transparent white when keeping alpha."""
    offset = ((spec.width - image.width) // 2, (spec.height - image.height) // 2)
    keep_alpha = alpha and spec.format in ("png", "webp")
    if keep_alpha:
        canvas = Image.new("RGBA", (spec.width, spec.height), (*_WHITE, 0))
        canvas.paste(image, offset)
        return canvas
    canvas = Image.new("RGB", (spec.width, spec.height), _WHITE)
    canvas.paste(image, offset, image if alpha else None)
    return canvas


def _save_jpeg(image: Image.Image, buffer: io.BytesIO, quality: int) -> None:
    image.save(buffer, "JPEG", quality=quality, optimize=False, progressive=False)


def _save_webp(image: Image.Image, buffer: io.BytesIO, quality: int) -> None:
    image.save(buffer, "WEBP", quality=quality, method=4)


# zlib level 3: on photo-like 1536x1536 output it takes ~40% of level 6's CPU for a file
# about as small (docs/benchmarks.md); post-processing is the service's main CPU cost.
PNG_COMPRESS_LEVEL = 3


def _save_png(image: Image.Image, buffer: io.BytesIO, quality: int) -> None:  # noqa: ARG001
    image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)


_SAVERS: dict[str, Callable[[Image.Image, io.BytesIO, int], None]] = {
    "jpeg": _save_jpeg,
    "webp": _save_webp,
    "png": _save_png,
}


def postprocess(data: bytes, spec: OutputSpec, *, max_pixels: int) -> bytes:
    """Decode a provider's image and encode exactly ``spec.width x spec.height`` in its format."""
    saver = _SAVERS.get(spec.format)
    if saver is None:
        raise ValueError(f"unsupported output format {spec.format!r}")  # intake refuses it
    image = _open(data, max_pixels)
    with image:
        _draft(image, spec)
        _load(image)
        upright = ImageOps.exif_transpose(image) if _orientation(image) != 1 else image
        fitted, alpha = _fit(upright, spec.width, spec.height)
    canvas = _canvas(fitted, spec, alpha)
    buffer = io.BytesIO()
    saver(canvas, buffer, spec.quality)
    return buffer.getvalue()
