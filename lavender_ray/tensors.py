"""Small tensor helpers every side shares: dtype names, map resizing and min-max normalisation.

Pure torch (no model, no state). The SD targets, the VLM maps and the Aligner's output all go
through the same `resize_maps` and `minmax_normalise`, so the two sides of the alignment loss
are made alike by one piece of code.

Shapes::

    ...   any leading dims (batch, tokens, heads, words)
    h, w  a map's height and width        s  output side (32)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
MINMAX_EPS = 1e-8


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """`[..., h, w]` -> `[..., s, s]`, bilinear with `align_corners=False`."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    if (h, w) == (size, size):
        return maps
    flat = maps.reshape(-1, 1, h, w)  # [..., h, w] -> [N, 1, h, w]
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, size, size)  # [N, 1, s, s] -> [..., s, s]


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map `[..., h, w]` to [0, 1] over its own pixels: (m - min) / (max - min + 1e-8)."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo + MINMAX_EPS)
