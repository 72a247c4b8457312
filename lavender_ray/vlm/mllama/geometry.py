"""Mllama geometry: cross-attention keys -> the patch canvas of the image's tiles, and where the
image lies on it.

The processor fits the image into a canvas of R x C tiles keeping its aspect ratio (never
below one tile side, never above the canvas) and pads the rest at the bottom and right; the
image's box on the patch canvas is therefore (0, 0, h'/patch, w'/patch) for the fitted size
(h', w'), computed by the processor's own `get_image_size_fit_to_canvas`.

Shapes::

    ...      any leading dims (e.g. heads, queries)
    K        image keys of one cross-attention layer: max_tiles * (1 + p*p)
    p        patches per tile side (tile size / patch size, 40 for Llama-3.2-Vision)
    R, C     tile rows / tile columns of the image's canvas (from the aspect-ratio id)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.models.mllama.image_processing_pil_mllama import get_image_size_fit_to_canvas


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


def image_box(
    height: int, width: int, tile_rows: int, tile_cols: int, tile_size: int, patch_size: int
) -> tuple[float, float, float, float]:
    """The image's box on its patch canvas (top, left, bottom, right, in patches): where the
    processor's resize puts a `height` x `width` image on a canvas of R x C tiles."""
    fitted_h, fitted_w = get_image_size_fit_to_canvas(
        height, width, tile_rows * tile_size, tile_cols * tile_size, tile_size
    )
    return 0.0, 0.0, float(fitted_h) / patch_size, float(fitted_w) / patch_size


def canvas_pixels(
    tiles: torch.Tensor, tile_rows: int, tile_cols: int, patch_size: int
) -> torch.Tensor:
    """One image's processed tiles `[max_tiles, 3, T, T]` -> the mean pixel of each patch of
    its canvas `[3, R*p, C*p]` (tiles row-major on the canvas, padding tiles dropped)."""
    _, channels, side, _ = tiles.shape
    used = tiles[: tile_rows * tile_cols].float()  # [R*C, 3, T, T]
    grid = used.reshape(tile_rows, tile_cols, channels, side, side)  # -> [R, C, 3, T, T]
    canvas = grid.permute(2, 0, 3, 1, 4).reshape(  # -> [3, R, T, C, T] -> [3, R*T, C*T]
        channels, tile_rows * side, tile_cols * side
    )
    return F.avg_pool2d(canvas[None], patch_size)[0]  # [3, R*T, C*T] -> [3, R*p, C*p]

