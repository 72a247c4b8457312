"""The frame every map describes (METHOD.md section 3a): the whole original image, stretched
onto the s x s grid. Cell (i, j) covers image rows [i*H/s, (i+1)*H/s) and columns
[j*W/s, (j+1)*W/s) of a W x H image (after its EXIF orientation).

Each side brings its maps into this frame its own way (SD: `sd.extractor.sd_point_cell`; every
VLM family: `CapturingAdapter.point_cell`), and each exposes where a point of the original image
lands, so registration can be checked against `frame_cell`.
"""

from __future__ import annotations

import math


def frame_cell(x: float, y: float, width: int, height: int, size: int = 32) -> tuple[int, int]:
    """(row, col) of the frame cell holding point (x, y) of a `width` x `height` image."""
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"point ({x}, {y}) lies outside the {width}x{height} image")
    return min(math.floor(size * y / height), size - 1), min(math.floor(size * x / width), size - 1)
