"""Small tensor helpers every side shares: dtype names, map resampling and min-max normalisation.

Pure torch (no model, no state). The SD targets, the VLM maps and the Aligner's output all go
through the same `resize_maps` and `minmax_normalise`, so the two sides of the alignment loss
are made alike by one piece of code.

Resampling a grid of cells into the s x s frame (METHOD.md section 3a) is separable and linear,
one weight matrix per axis. `box` is the part of the grid the output covers, in grid-cell units
(fractions allowed: an Mllama image may end inside a patch). Per axis, an output cell spans
`L = (box end - box start) / s` grid cells:

- `L >= 1` (shrinking): area weights, the mean of the grid cells weighted by how much of each
  the output cell overlaps. Every grid cell inside the box reaches the output and gets gradient
  (plain bilinear sampling skips cells once it shrinks by more than 2x).
- `L < 1` (growing): bilinear interpolation between cell centres, clamped at the box's edge
  cells; over the whole grid this equals `F.interpolate(mode="bilinear", align_corners=False)`.

Shapes::

    ...     any leading dims (batch, tokens, heads, words)
    h, w    a grid's height and width        s  output side (32)
"""

from __future__ import annotations

import functools
import math

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
MINMAX_EPS = 1e-8

Box = tuple[float, float, float, float]  # top, left, bottom, right, in grid cells


@functools.lru_cache(maxsize=512)
def axis_weights(cells: int, start: float, end: float, size: int) -> torch.Tensor:
    """`[size, cells]` float64: row i holds the weights output cell i gives the grid cells of
    one axis, the output covering grid positions [start, end) (see the module docstring)."""
    if not 0 <= start < end <= cells:
        raise ValueError(f"box [{start}, {end}) does not lie inside a grid of {cells} cells")
    span = (end - start) / size  # grid cells per output cell
    grid = torch.arange(cells, dtype=torch.float64)
    if span >= 1:
        edges = start + span * torch.arange(size + 1, dtype=torch.float64)  # [size + 1]
        lo, hi = edges[:-1, None], edges[1:, None]  # [size, 1]
        overlap = (torch.minimum(hi, grid + 1) - torch.maximum(lo, grid)).clamp(min=0)
        return overlap / span  # [size, cells]
    first, last = math.floor(start), math.ceil(end) - 1  # grid cells the box touches
    centres = start + span * (torch.arange(size, dtype=torch.float64) + 0.5) - 0.5
    centres = centres.clamp(first, last)  # in grid-cell-centre coordinates
    low = centres.floor().long()
    frac = centres - low
    high = (low + 1).clamp(max=last)
    weights = torch.zeros(size, cells, dtype=torch.float64)
    rows = torch.arange(size)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights


def resize_maps(maps: torch.Tensor, size: int, box: Box | None = None) -> torch.Tensor:
    """`[..., h, w]` -> `[..., s, s]`: the part `box` of each map (default: all of it) resampled
    onto an s x s grid, area-weighted where it shrinks, bilinear where it grows. Linear in
    `maps`, so gradients flow to every cell the output covers."""
    h, w = maps.shape[-2:]
    top, left, bottom, right = box if box is not None else (0.0, 0.0, float(h), float(w))
    if (top, left, bottom, right) == (0, 0, h, w) == (0, 0, size, size):
        return maps
    rows = axis_weights(h, float(top), float(bottom), size).to(maps.device, maps.dtype)
    cols = axis_weights(w, float(left), float(right), size).to(maps.device, maps.dtype)
    return torch.einsum("yh,...hw,xw->...yx", rows, maps, cols)  # [..., h, w] -> [..., s, s]


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map `[..., h, w]` to [0, 1] over its own pixels: (m - min) / (max - min + 1e-8)."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo + MINMAX_EPS)
