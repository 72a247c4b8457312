"""`lavender_ray.images.decode_image` and `check_image`: every bad-input kind gets its reject
code (the same from both), every convertible mode becomes the expected RGB pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lavender_ray.images import MAX_ASPECT_RATIO, MIN_IMAGE_SIDE, check_image, decode_image
from lavender_ray.schema import RecordError

MAX_PIXELS = 100 * 100


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares `width` x `height` (PIL refuses zero sizes at open)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def noise_rgb(size: int = 24, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def bad_image_cases() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reject code) for every unusable image kind (MAX_PIXELS limit)."""
    png = encode(noise_rgb())
    jpeg = encode(noise_rgb(), "JPEG")
    return {
        "empty": (b"", "empty_image"),
        "corrupt": (b"this is not an image" * 4, "corrupt_image"),
        "truncated_png": (png[: len(png) // 2], "truncated_image"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 3], "truncated_image"),
        "zero_size": (png_header_only(0, 12), "zero_size_image"),
        "one_pixel": (encode(Image.new("RGB", (1, 1), (9, 9, 9))), "image_too_small"),
        "thin": (encode(Image.new("RGB", (MIN_IMAGE_SIDE - 1, 64))), "image_too_small"),
        "strip": (encode(Image.new("RGB", (8, 8 * int(MAX_ASPECT_RATIO) + 8))),
                  "extreme_aspect_ratio"),
        "huge": (png_header_only(101, 100), "image_too_large"),
    }


def convertible_cases() -> dict[str, tuple[bytes, tuple[int, int, int]]]:
    """name -> (bytes, expected RGB of pixel (0, 0)) for every mode that must be converted."""
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan/black, full magenta+yellow
    palette = Image.new("RGB", (8, 8), (0, 0, 255)).convert("P")
    transparent_palette = Image.new("P", (8, 8), 0)
    transparent_palette.putpalette([10, 20, 30] * 256)
    transparent_palette.info["transparency"] = 0
    return {
        "grayscale": (encode(Image.new("L", (8, 8), 77)), (77, 77, 77)),
        "rgba_transparent": (encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0))), (255, 255, 255)),
        "rgba_opaque": (encode(Image.new("RGBA", (8, 8), (255, 0, 0, 255))), (255, 0, 0)),
        "gray_alpha": (encode(Image.new("LA", (8, 8), (0, 0))), (255, 255, 255)),
        "palette": (encode(palette), (0, 0, 255)),
        "palette_transparent": (encode(transparent_palette), (255, 255, 255)),
        "gray16": (encode(Image.fromarray(np.full((8, 8), 65535, np.uint16))), (255, 255, 255)),
        "gray16_mid": (encode(Image.fromarray(np.full((8, 8), 32896, np.uint16))), (128, 128, 128)),
        "float_tiff": (
            encode(Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"),
            (128, 128, 128),
        ),
        "cmyk_jpeg": (encode(cmyk, "JPEG"), (255, 0, 0)),
        "one_bit": (encode(Image.new("1", (8, 8), 1)), (255, 255, 255)),
    }


@pytest.mark.parametrize("name", sorted(bad_image_cases()))
@pytest.mark.parametrize("decode", [decode_image, check_image])
def test_unusable_images_raise_their_reject_code(name: str, decode) -> None:
    data, code = bad_image_cases()[name]
    with pytest.raises(RecordError) as err:
        decode(data, MAX_PIXELS)
    assert err.value.reason == code, f"{name}: {err.value}"
    assert "object at 0x" not in err.value.detail and "BytesIO" not in err.value.detail


def test_check_image_gives_the_size_and_reads_every_byte() -> None:
    jpeg = encode(noise_rgb(size=64), "JPEG")
    assert check_image(jpeg, MAX_PIXELS) == (64, 64)  # decoded at 1/8 scale, full size given
    with pytest.raises(RecordError) as err:
        check_image(jpeg[:-40], MAX_PIXELS)  # only the end is missing: found by decoding
    assert err.value.reason == "truncated_image"
    with pytest.raises(RecordError, match="not an image format PIL reads"):
        check_image(b"GIF89a" + b"\x00" * 3, MAX_PIXELS)  # a header with nothing after it
    edge = encode(Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE * int(MAX_ASPECT_RATIO))))
    assert check_image(edge, 10**6) == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE * int(MAX_ASPECT_RATIO))


@pytest.mark.parametrize("name", sorted(convertible_cases()))
def test_convertible_modes_become_rgb(name: str) -> None:
    data, expected = convertible_cases()[name]
    image = decode_image(data, MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.size == (8, 8)
    pixel = image.getpixel((0, 0))
    assert all(abs(a - b) <= 2 for a, b in zip(pixel, expected)), pixel


def test_good_image_is_loaded_and_unchanged() -> None:
    original = noise_rgb(size=16, seed=3)
    image = decode_image(encode(original), MAX_PIXELS)
    assert np.array_equal(np.asarray(image), np.asarray(original))


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), MAX_PIXELS).size == (10, 20)


def test_size_limit_is_inclusive() -> None:
    exactly = encode(Image.new("RGB", (100, 100)))
    assert decode_image(exactly, MAX_PIXELS).size == (100, 100)
