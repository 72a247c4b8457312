"""Decode and validate encoded image bytes into RGB PIL images (pure PIL + numpy).

`decode_image(data, max_pixels)` either returns an RGB image or raises `schema.RecordError`
with one of these reject codes:

    empty_image       no bytes
    corrupt_image     not an image PIL can identify or decode
    truncated_image   the file ends early
    zero_size_image   width or height is 0
    image_too_small   width or height below MIN_IMAGE_SIDE (e.g. a 1-pixel image)
    image_too_large   more than `max_pixels` pixels (checked from the header, before decoding)

Whatever can be converted is converted: EXIF orientation is applied; grayscale, CMYK, YCbCr,
LAB, HSV and 1-bit images become RGB; transparent images (RGBA, LA, palette with transparency)
are composited onto white; 16/32-bit integer and float grayscale are rescaled to 8 bits. The SD
stage and the VLM stage decode through this one function so both see the same pixels.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lavender_ray.schema import RecordError

MIN_IMAGE_SIDE = 2  # a 1-pixel-wide image has no spatial layout to attend to
WHITE = (255, 255, 255)
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(data: bytes | None, max_pixels: int) -> Image.Image:
    """Encoded bytes -> a fully loaded RGB image, or `RecordError` (codes above)."""
    if not data:
        raise RecordError("empty_image", "no image bytes")
    image = _open(data, max_pixels)
    width, height = image.size
    if width == 0 or height == 0:
        raise RecordError("zero_size_image", f"size {width}x{height}")
    if min(width, height) < MIN_IMAGE_SIDE:
        detail = f"size {width}x{height}, minimum side {MIN_IMAGE_SIDE}"
        raise RecordError("image_too_small", detail)
    if width * height > max_pixels:
        detail = f"{width}x{height} > {max_pixels} pixels (data.max_image_pixels)"
        raise RecordError("image_too_large", detail)
    _load(image)
    return to_rgb(ImageOps.exif_transpose(image))


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the format and read the header only (lazy)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        detail = f"{err} (data.max_image_pixels={max_pixels})"
        raise RecordError("image_too_large", detail) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        size = _declared_size(data)
        if size is not None and 0 in size:
            detail = f"header declares size {size[0]}x{size[1]}"
            raise RecordError("zero_size_image", detail) from None
        raise RecordError(_failure_reason(err), str(err)) from None


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or GIF header; PIL refuses to open zero-size files, so this is
    how a zero-size image is told apart from a corrupt one. None for other formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _load(image: Image.Image) -> None:
    """Decode the pixels; a short file is `truncated_image`, any other failure `corrupt_image`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise RecordError(_failure_reason(err), str(err)) from None


def _failure_reason(err: Exception) -> str:
    """PIL reports a short file as an OSError/EOFError mentioning truncation."""
    truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
    return "truncated_image" if truncated else "corrupt_image"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (8 bits per channel); transparency composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_BIT_MODES or image.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float grayscale -> uint8.

    Integers: values above 255 mean a 16-bit range (x / 257); float: [0, 1] is scaled by 255,
    anything else is clipped to [0, 255]."""
    values = pixels.astype(np.float64)
    if np.issubdtype(pixels.dtype, np.floating):
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            values = values * 255.0
    elif values.max(initial=0) > 255:
        values = values / 257.0
    return np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
