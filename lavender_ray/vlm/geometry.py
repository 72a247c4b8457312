"""Pure layout functions: attention over image keys -> 2-D maps on the image's grid -> s x s.

Every function here is a pure tensor function (no model, no state); the family adapters call them
with numbers they read from the model config and the processor outputs, never hard-coded ones.

Shapes::

    ...      any leading dims (e.g. heads, queries)
    K        image keys of one attention layer
    p        patches per tile side (Mllama: tile size / patch size, 40 for Llama-3.2-Vision)
    R, C     tile rows / tile columns of an Mllama canvas (from the aspect-ratio id)
    gh, gw   token grid height / width (LLaVA: image size / patch size; Qwen2-VL: grid_thw / merge)
    s        output map side (32)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def tile_grid(
    aspect_ratio_id: int, supported_aspect_ratios: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """Mllama aspect-ratio id -> (tile rows, tile columns) of the image's canvas.

    Ids are 1-based indices into the vision config's `supported_aspect_ratios` (each entry is
    `[tiles_high, tiles_wide]`, as the Mllama image processor writes them); id 0 means "no image".
    """
    n = len(supported_aspect_ratios)
    if not 1 <= aspect_ratio_id <= n:
        raise ValueError(
            f"aspect_ratio_id={aspect_ratio_id} is not an image's tiling; allowed ids are 1..{n} "
            f"(0 marks a padding image, which has no attention map)"
        )
    rows, cols = supported_aspect_ratios[aspect_ratio_id - 1]
    return int(rows), int(cols)


def mllama_canvas(
    probs: torch.Tensor, patches_per_side: int, tile_rows: int, tile_cols: int
) -> torch.Tensor:
    """Mllama cross-attention keys of one image -> the patch canvas of that image.

    `probs` is `[..., K]` with `K = max_tiles * (1 + p*p)`: one block per tile, each starting with
    the tile's CLS key followed by its `p*p` patches in row-major order. Tiles are row-major on the
    canvas (`R` rows of `C` tiles). CLS keys and the padding tiles beyond `R*C` are dropped.
    Returns `[..., R*p, C*p]`.
    """
    p, rows, cols = patches_per_side, tile_rows, tile_cols
    per_tile = 1 + p * p
    lead, keys = probs.shape[:-1], probs.shape[-1]
    if keys % per_tile:
        raise ValueError(
            f"{keys} image keys do not split into tiles of 1 CLS + {p}x{p} patches "
            f"({per_tile} keys)"
        )
    max_tiles = keys // per_tile
    if rows * cols > max_tiles:
        raise ValueError(
            f"a {rows}x{cols} tiling needs {rows * cols} tiles, the keys hold {max_tiles}"
        )
    tiles = probs.reshape(*lead, max_tiles, per_tile)  # [..., K] -> [..., max_tiles, 1+p*p]
    tiles = tiles[..., : rows * cols, 1:]  # -> [..., R*C, p*p]: no padding tiles, no CLS
    tiles = tiles.reshape(*lead, rows, cols, p, p)  # [..., R*C, p*p] -> [..., R, C, p, p]
    canvas = tiles.transpose(-3, -2)  # [..., R, C, p, p] -> [..., R, p, C, p]
    return canvas.reshape(*lead, rows * p, cols * p)  # [..., R, p, C, p] -> [..., R*p, C*p]


def token_grid(probs: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Row-major image tokens `[..., gh*gw]` -> `[..., gh, gw]`."""
    if probs.shape[-1] != grid_h * grid_w:
        raise ValueError(
            f"{probs.shape[-1]} image tokens do not fill a {grid_h}x{grid_w} grid "
            f"({grid_h * grid_w})"
        )
    return probs.reshape(*probs.shape[:-1], grid_h, grid_w)  # [..., gh*gw] -> [..., gh, gw]


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """`[..., h, w]` -> `[..., s, s]`, bilinear with `align_corners=False` (same as the SD side)."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    if (h, w) == (size, size):
        return maps
    flat = maps.reshape(-1, 1, h, w)  # [..., h, w] -> [N, 1, h, w]
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, size, size)  # [N, 1, s, s] -> [..., s, s]


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


def cell_box(row: int, col: int, grid_h: int, grid_w: int, size: int) -> tuple[int, int, int, int]:
    """Cells `[r0, r1) x [c0, c1)` of an s x s map that overlap cell `(row, col)` of a gh x gw
    grid stretched over the same square (at least one cell, also when the grid is finer)."""

    def span(index: int, cells: int) -> tuple[int, int]:
        start = index * size // cells
        end = -(-(index + 1) * size // cells)  # ceil
        return start, end

    (r0, r1), (c0, c1) = span(row, grid_h), span(col, grid_w)
    return r0, r1, c0, c1
