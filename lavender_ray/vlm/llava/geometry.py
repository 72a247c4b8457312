"""LLaVA geometry: how many image tokens, on which grid, and where the image lies on it.

LLaVA-1.5's processor resizes the short side and centre-crops a square, which would cut the
sides of a non-square image off the VLM's view (METHOD.md section 3a). The image is therefore
padded to a square with the processor's mean colour first (`pad_to_square`, as LLaVA-1.5 was
trained: `image_aspect_ratio: pad`), so the crop keeps all of it; the image's box on the token
grid is the pasted image (`square_box`).
"""

from __future__ import annotations

from typing import Any

from PIL import Image


def llava_grid(image_size: int, patch_size: int, num_tokens: int) -> tuple[int, int, int]:
    """LLaVA image tokens -> (gh, gw, leading tokens to drop).

    The projector emits `(image_size / patch_size)^2` tokens, plus the CLS token first when the
    vision feature strategy is "full".
    """
    side = image_size // patch_size
    if num_tokens == side * side:
        return side, side, 0
    if num_tokens == side * side + 1:
        return side, side, 1
    raise ValueError(
        f"{num_tokens} image tokens fit neither a {side}x{side} patch grid ({side * side}) nor the "
        f"grid plus CLS ({side * side + 1}) for image_size={image_size}, patch_size={patch_size}"
    )


def pad_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """`image` centred on a square of side max(width, height) filled with `colour`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def square_box(height: int, width: int, grid: int) -> tuple[float, float, float, float]:
    """The box of a `height` x `width` image on the `grid` x `grid` token grid of its padded
    square (top, left, bottom, right, in tokens)."""
    side = max(width, height)
    top, left = (side - height) // 2, (side - width) // 2
    scale = grid / side
    return top * scale, left * scale, (top + height) * scale, (left + width) * scale


def mean_colour(image_processor: Any) -> tuple[int, int, int]:
    """The processor's mean pixel as 8-bit RGB (the padding LLaVA-1.5 used)."""
    r, g, b = (round(255 * float(v)) for v in image_processor.image_mean)
    return r, g, b


def check_keeps_the_square(image_processor: Any) -> None:
    """A processor that resizes the short side and then crops a smaller square would cut the
    padded square's border off (the image's edges); refuse it, naming its settings."""
    size = getattr(image_processor, "size", None)
    crop = getattr(image_processor, "crop_size", None)
    shortest = getattr(size, "shortest_edge", None) if size is not None else None
    if not getattr(image_processor, "do_center_crop", False) or shortest is None or crop is None:
        return
    if (crop.height, crop.width) != (shortest, shortest):
        raise ValueError(
            f"the LLaVA image processor resizes the short side to {shortest} and crops "
            f"{crop.height}x{crop.width}: part of every image would be cut off the VLM's view, "
            "and its attention could not cover the frame of the SD targets; use a processor "
            "whose crop equals its shortest edge (as LLaVA-1.5's 336/336)"
        )

