"""Decode and validate encoded image bytes into RGB PIL images (pure PIL + numpy).

`decode_image(data, max_pixels)` either returns an RGB image or raises `schema.RecordError`
with one of these reject codes:

    empty_image           no bytes
    corrupt_image         not an image PIL can identify or decode
    truncated_image       the file ends early
    zero_size_image       width or height is 0
    image_too_small       width or height below MIN_IMAGE_SIDE (a 1-pixel image, a spacer GIF)
    extreme_aspect_ratio  long side / short side above MAX_ASPECT_RATIO (a 1x5000 strip)
    image_too_large       more than `max_pixels` pixels (checked from the header, before decoding)

`check_image(data, max_pixels)` runs the same checks and the same decoding at reduced scale
(JPEG draft mode), so the readers reject at read time, naming the file, every image the SD
stage, the trainer or the evaluation would fail on. Details name the problem, never a Python
object (`cannot identify image file`, not a `BytesIO` repr).

The limits, measured on the shipped families with their released image geometry
(transformers 5.23-5.24, `build_tiny(..., real_geometry=True)`): LLaVA-1.5, Mllama and Qwen2-VL
all accept any side from 1 px (each resizes to its own grid); Qwen2-VL's `smart_resize` raises
above an aspect ratio of 200 (and transformers 4.x raised below 28 px). The limits here are
stricter than what crashes, for what can be learnt from: MIN_IMAGE_SIDE = 8 (below it an image
is an icon, a spacer or a tracking pixel, upsampled 40-70x by every family, with no layout for
an attention map to describe) and MAX_ASPECT_RATIO = 50 (past it every family sees a strip a
few patches thick, and SD's square target stretches it 50-fold).

Whatever can be converted is converted: EXIF orientation is applied; grayscale, CMYK, YCbCr,
LAB, HSV and 1-bit images become RGB; transparent images (RGBA, LA, palette with transparency)
are composited onto white; 16/32-bit integer and float grayscale are rescaled to 8 bits. The SD
stage and the VLM stage decode through this one function so both see the same pixels.
"""

from __future__ import annotations

import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lavender_ray.schema import RecordError

MIN_IMAGE_SIDE = 8  # pixels; smaller: an icon or a spacer (module docstring)
MAX_ASPECT_RATIO = 50.0  # long side / short side; Qwen2-VL's processor raises above 200
WHITE = (255, 255, 255)
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_image(data: bytes | None, max_pixels: int) -> Image.Image:
    """Encoded bytes -> a fully loaded RGB image, or `RecordError` (codes above)."""
    return _convert(_open_checked(data, max_pixels), reduced=False)


def check_image(data: bytes | None, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an image `decode_image` accepts, else its `RecordError`; decodes at
    reduced scale where the format allows (JPEG), which still reads every byte."""
    image = _open_checked(data, max_pixels)
    size = image.size
    _convert(image, reduced=True)
    return size


def _open_checked(data: bytes | None, max_pixels: int) -> Image.Image:
    """The lazily opened image once its header passes every size check."""
    if not data:
        raise RecordError("empty_image", "no image bytes (an empty file?)")
    image = _open(data, max_pixels)
    width, height = image.size
    if width == 0 or height == 0:
        raise RecordError("zero_size_image", f"size {width}x{height}")
    if min(width, height) < MIN_IMAGE_SIDE:
        detail = f"size {width}x{height}, minimum side {MIN_IMAGE_SIDE} px"
        raise RecordError("image_too_small", detail)
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        detail = f"size {width}x{height}, aspect ratio above {MAX_ASPECT_RATIO:g}:1"
        raise RecordError("extreme_aspect_ratio", detail)
    if width * height > max_pixels:
        detail = f"{width}x{height} > {max_pixels} pixels (data.max_image_pixels)"
        raise RecordError("image_too_large", detail)
    return image


def _convert(image: Image.Image, reduced: bool) -> Image.Image:
    """Decode the pixels, apply EXIF orientation, convert to RGB. Decoding untrusted bytes can
    fail in any PIL plugin with any exception: each one is a property of the bytes, so each
    becomes a reject (`truncated_image` or `corrupt_image`), never a crash."""
    try:
        if reduced and image.format == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        _load(image)
        return to_rgb(ImageOps.exif_transpose(image))
    except RecordError:
        raise
    except Exception as err:  # any plugin, any exception: see the docstring
        raise RecordError(_failure_reason(err), _describe(err)) from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the format and read the header only (lazy)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        detail = f"{err} (data.max_image_pixels={max_pixels})"
        raise RecordError("image_too_large", detail) from None
    except Exception as err:  # any failure to parse a header is a bad image
        size = _declared_size(data)
        if size is not None and 0 in size:
            detail = f"header declares size {size[0]}x{size[1]}"
            raise RecordError("zero_size_image", detail) from None
        raise RecordError(_failure_reason(err), _describe(err, data)) from None


def _describe(err: Exception, data: bytes | None = None) -> str:
    """An error's message without object reprs: PIL's `cannot identify image file
    <_io.BytesIO object at 0x...>` becomes `not an image format PIL reads (starts with ...)`."""
    if isinstance(err, UnidentifiedImageError):
        head = data[:16] if data is not None else b""
        return f"not an image format PIL reads (starts with {head!r}, {len(data or b'')} bytes)"
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "the image", str(err))
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or GIF header; PIL refuses to open zero-size files, so this is
    how a zero-size image is told apart from a corrupt one. None for other formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _load(image: Image.Image) -> None:
    """Decode the pixels (the decompression-bomb warning is ours to judge: `max_pixels`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image.load()


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
