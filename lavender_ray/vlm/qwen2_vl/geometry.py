"""Qwen2-VL geometry: an image's patch grid after the vision tower's spatial merge."""

from __future__ import annotations

from collections.abc import Sequence


def merged_grid(grid_thw: Sequence[int], merge_size: int) -> tuple[int, int]:
    """Qwen2-VL `image_grid_thw` row `(t, h, w)` in patches -> the token grid after spatial merge.

    Merged tokens are row-major over `(h / merge, w / merge)`; an image has `t == 1`.
    """
    t, h, w = (int(v) for v in grid_thw)
    if t != 1:
        raise ValueError(
            f"image_grid_thw=({t}, {h}, {w}): t must be 1 for an image (videos unsupported)"
        )
    if h % merge_size or w % merge_size:
        raise ValueError(f"image grid {h}x{w} is not divisible by spatial_merge_size={merge_size}")
    return h // merge_size, w // merge_size
