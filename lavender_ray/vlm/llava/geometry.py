"""LLaVA geometry: how many image tokens, on which grid."""

from __future__ import annotations


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
