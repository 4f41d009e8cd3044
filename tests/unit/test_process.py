"""Pure image transforms: exact output sizes and formats, alpha, EXIF, bombs, garbage."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from imagestudio import errors
from imagestudio.domain import OutputSpec
from imagestudio.errors import BadImage, SourceTooLarge
from imagestudio.imaging.process import (
    image_size,
    postprocess,
    prepare_source,
    sniff,
    with_extension,
)

MAX_PIXELS = 10_000_000
RED = (200, 20, 20)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(size: tuple[int, int], mode: str = "RGB", colour: object = RED) -> Image.Image:
    return Image.new(mode, size, colour)  # type: ignore[arg-type]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("data_fmt", "mime", "ext"),
    [
        ("PNG", "image/png", "png"),
        ("JPEG", "image/jpeg", "jpg"),
        ("WEBP", "image/webp", "webp"),
        ("GIF", "image/gif", "gif"),
        ("BMP", "image/bmp", "bmp"),
        ("TIFF", "image/tiff", "tiff"),
    ],
)
def test_sniff_knows_each_supported_format(data_fmt: str, mime: str, ext: str) -> None:
    assert sniff(encode(solid((4, 4)), data_fmt)) == (mime, ext)


@pytest.mark.parametrize("data", [b"", b"<html>nope</html>", b"RIFF\x00\x00\x00\x00WAVE"])
def test_sniff_rejects_non_images(data: bytes) -> None:
    with pytest.raises(BadImage):
        sniff(data)


SOURCE_SIZES = [(400, 400), (800, 200), (200, 800), (1, 1000), (1000, 1), (37, 91), (1500, 1000)]
SOURCE_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
TARGETS = [
    OutputSpec(width=256, height=256, format="png", quality=90),
    OutputSpec(width=300, height=150, format="jpeg", quality=80),
    OutputSpec(width=120, height=333, format="webp", quality=70),
]


@pytest.mark.parametrize("size", SOURCE_SIZES)
@pytest.mark.parametrize("spec", TARGETS, ids=lambda s: f"{s.width}x{s.height}-{s.format}")
def test_postprocess_gives_exact_size_and_format(size: tuple[int, int], spec: OutputSpec) -> None:
    out = decode(postprocess(encode(solid(size), "PNG"), spec, max_pixels=MAX_PIXELS))
    assert out.size == (spec.width, spec.height)
    assert out.format == spec.format.upper()


@pytest.mark.parametrize("source_format", SOURCE_FORMATS)
def test_postprocess_reads_every_source_format(source_format: str) -> None:
    spec = OutputSpec(width=64, height=48, format="jpeg", quality=85)
    out = decode(postprocess(encode(solid((50, 70)), source_format), spec, max_pixels=MAX_PIXELS))
    assert (out.size, out.format, out.mode) == ((64, 48), "JPEG", "RGB")


def test_contain_on_white_centres_without_cropping() -> None:
    spec = OutputSpec(width=200, height=100, format="png", quality=90)
    out = decode(postprocess(encode(solid((100, 100)), "PNG"), spec, max_pixels=MAX_PIXELS))
    assert out.mode == "RGB"
    assert out.getpixel((5, 50)) == (255, 255, 255)  # left margin
    assert out.getpixel((195, 50)) == (255, 255, 255)  # right margin
    assert out.getpixel((100, 50)) == RED  # product in the middle
    assert out.getpixel((100, 1)) == RED  # full height: nothing cropped


def test_jpeg_flattens_transparency_onto_white() -> None:
    source = solid((100, 100), "RGBA", (0, 0, 0, 0))
    source.paste((0, 0, 255, 255), (40, 40, 60, 60))
    spec = OutputSpec(width=100, height=100, format="jpeg", quality=95)
    out = decode(postprocess(encode(source, "PNG"), spec, max_pixels=MAX_PIXELS))
    assert out.mode == "RGB"
    assert all(c > 245 for c in out.getpixel((5, 5)))  # type: ignore[union-attr]
    red, green, blue = out.getpixel((50, 50))  # type: ignore[misc]
    assert blue > 200
    assert max(red, green) < 40


@pytest.mark.parametrize(("mode", "expected"), [("RGBA", "RGBA"), ("RGB", "RGB"), ("LA", "RGBA")])
def test_png_keeps_alpha_only_when_the_source_had_it(mode: str, expected: str) -> None:
    colour = {"RGBA": (1, 2, 3, 128), "RGB": (1, 2, 3), "LA": (9, 128)}[mode]
    spec = OutputSpec(width=80, height=40, format="png", quality=90)
    out = decode(
        postprocess(encode(solid((40, 40), mode, colour), "PNG"), spec, max_pixels=MAX_PIXELS)
    )
    assert out.mode == expected
    if expected == "RGBA":
        assert out.getpixel((2, 20)) == (255, 255, 255, 0)  # transparent white margin
        assert out.getpixel((40, 20))[3] == 128  # type: ignore[index]


def test_webp_keeps_alpha_when_the_source_had_it() -> None:
    spec = OutputSpec(width=64, height=64, format="webp", quality=80)
    data = encode(solid((32, 16), "RGBA", (0, 0, 0, 0)), "PNG")
    assert decode(postprocess(data, spec, max_pixels=MAX_PIXELS)).mode == "RGBA"


def test_png_ignores_quality() -> None:
    data = encode(solid((64, 64)), "PNG")
    low = postprocess(data, OutputSpec(32, 32, "png", 1), max_pixels=MAX_PIXELS)
    high = postprocess(data, OutputSpec(32, 32, "png", 100), max_pixels=MAX_PIXELS)
    assert low == high


def test_jpeg_quality_changes_the_size() -> None:
    noisy = Image.effect_noise((128, 128), 80).convert("RGB")
    data = encode(noisy, "PNG")
    low = postprocess(data, OutputSpec(128, 128, "jpeg", 20), max_pixels=MAX_PIXELS)
    high = postprocess(data, OutputSpec(128, 128, "jpeg", 95), max_pixels=MAX_PIXELS)
    assert len(low) < len(high)


def with_orientation(image: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif.tobytes())


def test_postprocess_applies_exif_rotation() -> None:
    # Stored 200x100, orientation 6 (rotate 90 clockwise to view): upright it is 100x200.
    data = with_orientation(solid((200, 100)), 6)
    spec = OutputSpec(width=100, height=200, format="png", quality=90)
    out = decode(postprocess(data, spec, max_pixels=MAX_PIXELS))
    pixel = out.getpixel((50, 5))  # upright, it fills the portrait canvas: no white margins
    assert pixel[0] > 180  # type: ignore[index]
    assert pixel[1] < 60  # type: ignore[index]


def test_prepare_source_rotates_and_reencodes_to_png() -> None:
    source = prepare_source(
        with_orientation(solid((200, 100)), 6), "shot.jpg", max_pixels=MAX_PIXELS
    )
    assert (source.mime, source.filename) == ("image/png", "shot.png")
    assert image_size(source.data) == (100, 200)


@pytest.mark.parametrize(
    ("fmt", "name", "mime", "expected_name"),
    [
        ("PNG", "a.png", "image/png", "a.png"),
        ("JPEG", "a.jpeg", "image/jpeg", "a.jpeg"),
        ("JPEG", "photo", "image/jpeg", "photo.jpg"),
        ("WEBP", "x.bin", "image/webp", "x.webp"),
    ],
)
def test_prepare_source_passes_web_formats_through(
    fmt: str, name: str, mime: str, expected_name: str
) -> None:
    data = encode(solid((30, 20)), fmt)
    source = prepare_source(data, name, max_pixels=MAX_PIXELS)
    assert (source.data, source.mime, source.filename) == (data, mime, expected_name)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_prepare_source_reencodes_other_formats_to_png(fmt: str) -> None:
    source = prepare_source(encode(solid((30, 20)), fmt), "a." + fmt.lower(), max_pixels=MAX_PIXELS)
    assert (source.mime, source.filename, image_size(source.data)) == (
        "image/png",
        "a.png",
        (30, 20),
    )
    assert sniff(source.data) == ("image/png", "png")


def test_prepare_source_reencodes_cmyk_jpeg() -> None:
    source = prepare_source(
        encode(solid((8, 8), "CMYK", (0, 0, 0, 0)), "JPEG"), "c.jpg", max_pixels=100
    )
    assert source.mime == "image/png"
    assert decode(source.data).mode == "RGB"


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height``: a decompression bomb's shape."""
    data = bytearray(encode(solid((8, 8)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(("width", "height"), [(5_000, 5_000), (20_000, 20_000), (1, 200_000_000)])
def test_bomb_is_rejected_from_the_header_before_decoding(width: int, height: int) -> None:
    bomb = png_claiming_size(width, height)
    assert image_size(png_claiming_size(5_000, 5_000)) == (5_000, 5_000)
    spec = OutputSpec(width=64, height=64, format="png", quality=90)
    with pytest.raises(SourceTooLarge):
        prepare_source(bomb, "bomb.png", max_pixels=MAX_PIXELS)
    with pytest.raises(SourceTooLarge):
        postprocess(bomb, spec, max_pixels=MAX_PIXELS)


def test_pixel_cap_is_the_configured_one() -> None:
    data = encode(solid((100, 100)), "PNG")
    with pytest.raises(SourceTooLarge):
        prepare_source(data, "a.png", max_pixels=9_999)
    assert prepare_source(data, "a.png", max_pixels=10_000).data == data


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        encode(solid((64, 64)), "JPEG")[:200],  # truncated
    ],
)
def test_garbage_is_bad_image(data: bytes) -> None:
    spec = OutputSpec(width=64, height=64, format="png", quality=90)
    with pytest.raises(BadImage):
        postprocess(data, spec, max_pixels=MAX_PIXELS)
    with pytest.raises(BadImage):
        prepare_source(data, "x.png", max_pixels=MAX_PIXELS)


def test_image_size_and_garbage() -> None:
    assert image_size(encode(solid((7, 9)), "WEBP")) == (7, 9)
    with pytest.raises(BadImage):
        image_size(b"junk")


def test_unknown_output_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported output format"):
        postprocess(encode(solid((8, 8)), "PNG"), OutputSpec(8, 8, "gif", 90), max_pixels=100)


@pytest.mark.parametrize(
    ("name", "ext", "expected"),
    [("a.JPG", "jpg", "a.JPG"), ("dir/b.tif", "tiff", "b.tif"), ("", "png", "source.png")],
)
def test_with_extension(name: str, ext: str, expected: str) -> None:
    assert with_extension(name, ext) == expected


# -- errors cross the imaging worker processes (pickle) -------------------------------------

ERRORS = [
    errors.ImageStudioError("boom"),
    errors.BadImage("cannot decode image: truncated"),
    errors.SourceTooLarge("image is 9000x9000 pixels, over the cap of 64000000"),
    errors.PayloadInvalid("images[0].url", "not a URL"),
    errors.RateLimited("slow down", retry_after=2.5, limit="requests"),
    errors.ProviderTimeout("no answer", sent=False),
    errors.ProviderError("teapot", status_code=418),
    errors.ProviderUnavailable("503", status_code=503),
    errors.ProviderBusy("busy", retry_after=3.0, status_code=503),
    errors.AuthFailed("bad key", status_code=401),
    errors.LeaseLost("taken over"),
    errors.TooMuchInFlight("100 jobs in flight", retry_after=30.0),
    errors.AnswerTooLarge("answer over the cap of 1.0 MB", limit=1024 * 1024),
    errors.DeadlineExceeded("not done within the total deadline of 5 s", seconds=5.0),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_type_message_and_attributes(
    error: errors.ImageStudioError,
) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (str(copy), copy.args, copy.message) == (str(error), error.args, error.message)
    assert vars(copy) == vars(error)


def test_every_error_class_is_covered_by_the_pickle_test() -> None:
    classes = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ImageStudioError)
    }
    custom_init = {cls for cls in classes if "__init__" in vars(cls)}
    assert custom_init <= {type(e) for e in ERRORS}


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_results_pickle(fmt: str) -> None:
    source = prepare_source(encode(solid((10, 10)), "PNG"), "a.png", max_pixels=MAX_PIXELS)
    assert pickle.loads(pickle.dumps(source)) == source
    spec = OutputSpec(width=8, height=8, format=fmt, quality=90)
    assert pickle.loads(pickle.dumps(spec)) == spec


# -- reduced-scale JPEG decode (draft) and reduce() before LANCZOS --------------------------


def halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue: shows a wrong rotation or a shifted fit."""
    image = solid(size, colour=(220, 0, 0))
    image.paste((0, 0, 220), (size[0] // 2, 0, size[0], size[1]))
    return image


@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("side", [64, 300, 1000])
def test_a_large_jpeg_to_a_small_target_matches_a_full_decode(orientation: int, side: int) -> None:
    """A JPEG is decoded at reduced scale (draft) and reduced before LANCZOS; the same image
    as a PNG (no draft) gives what a full decode would: same size, rotation and colours."""
    jpeg = with_orientation(halves((1600, 800)), orientation)
    with Image.open(io.BytesIO(jpeg)) as full:
        png = encode(ImageOps.exif_transpose(full), "PNG")
    spec = OutputSpec(width=side, height=side // 2, format="png", quality=90)
    drafted = decode(postprocess(jpeg, spec, max_pixels=MAX_PIXELS)).convert("RGB")
    reference = decode(postprocess(png, spec, max_pixels=MAX_PIXELS)).convert("RGB")
    assert drafted.size == reference.size == (side, side // 2)
    difference = ImageStat.Stat(ImageChops.difference(drafted, reference)).mean
    assert max(difference) < 2.0, difference
