"""Qwen2-VL geometry: an image's patch grid after the vision tower's spatial merge.

The processor resizes the whole image to a multiple of patch x merge on each side (its
`smart_resize`: no crop, no padding), so the merged token grid covers exactly the image: the
image's box is the whole grid (METHOD.md section 3a).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def merged_pixels(
    patches: torch.Tensor, grid_h: int, grid_w: int, merge_size: int, channels: int = 3
) -> torch.Tensor:
    """One image's flattened processor patches `[gh*gw, C*t*p*p]` (the processor's `patchify`
    order: merge blocks row-major, then the m x m patches inside a block) -> the mean pixel of
    each merged token `[C, gh/m, gw/m]`."""
    rows, cols = grid_h // merge_size, grid_w // merge_size
    blocks = patches.float().reshape(rows, cols, merge_size * merge_size, channels, -1)
    return blocks.mean(dim=(2, 4)).permute(2, 0, 1)  # [gh/m, gw/m, C] -> [C, gh/m, gw/m]

