"""Pure layout functions of `lavender_ray.vlm.geometry`, with hand-built tensors."""

from __future__ import annotations

import pytest
import torch

from lavender_ray.tensors import resize_maps
from lavender_ray.vlm.geometry import token_grid
from lavender_ray.vlm.llava.geometry import llava_grid
from lavender_ray.vlm.mllama.geometry import mllama_canvas, tile_grid
from lavender_ray.vlm.qwen2_vl.geometry import merged_grid


def cell_box(row: int, col: int, grid_h: int, grid_w: int, size: int) -> tuple[int, int, int, int]:
    """Cells `[r0, r1) x [c0, c1)` of an s x s map that overlap cell `(row, col)` of a gh x gw
    grid stretched over the same square (at least one cell, also when the grid is finer)."""

    def span(index: int, cells: int) -> tuple[int, int]:
        return index * size // cells, -(-(index + 1) * size // cells)  # floor, ceil

    (r0, r1), (c0, c1) = span(row, grid_h), span(col, grid_w)
    return r0, r1, c0, c1


SUPPORTED = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]


def test_tile_grid_reads_supported_aspect_ratios():
    assert tile_grid(1, SUPPORTED) == (1, 1)
    assert tile_grid(2, SUPPORTED) == (1, 2)
    assert tile_grid(5, SUPPORTED) == (2, 1)
    assert tile_grid(6, SUPPORTED) == (2, 2)
    with pytest.raises(ValueError, match="allowed ids are 1..8"):
        tile_grid(0, SUPPORTED)


def _labelled_keys(max_tiles: int, p: int) -> torch.Tensor:
    """Keys valued tile*100 + patch index, CLS keys valued -1: [max_tiles * (1 + p*p)]."""
    blocks = []
    for tile in range(max_tiles):
        blocks.append(torch.tensor([-1.0]))
        blocks.append(tile * 100 + torch.arange(p * p, dtype=torch.float32))
    return torch.cat(blocks)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (1, 2), (2, 1), (2, 2), (1, 4)])
def test_mllama_canvas_places_tiles_row_major_and_drops_cls(rows, cols):
    p = 3
    keys = _labelled_keys(4, p).expand(2, 5, -1)  # leading dims stay untouched
    canvas = mllama_canvas(keys, p, rows, cols)
    assert canvas.shape == (2, 5, rows * p, cols * p)
    assert (canvas >= 0).all(), "a CLS key reached the canvas"
    for r in range(rows):
        for c in range(cols):
            for i in range(p):
                for j in range(p):
                    expected = (r * cols + c) * 100 + i * p + j
                    assert canvas[1, 4, r * p + i, c * p + j] == expected


def test_mllama_canvas_rejects_bad_key_counts():
    with pytest.raises(ValueError, match="do not split into tiles"):
        mllama_canvas(torch.zeros(11), 3, 1, 1)
    with pytest.raises(ValueError, match="needs 4 tiles"):
        mllama_canvas(torch.zeros(2 * 10), 3, 2, 2)


def test_token_grid_is_row_major():
    grid = token_grid(torch.arange(12.0).expand(3, -1), 3, 4)
    assert grid.shape == (3, 3, 4)
    assert grid[0, 2, 1] == 9
    with pytest.raises(ValueError, match="do not fill a 3x3 grid"):
        token_grid(torch.zeros(12), 3, 3)


def test_llava_grid_with_and_without_cls():
    assert llava_grid(336, 14, 576) == (24, 24, 0)
    assert llava_grid(336, 14, 577) == (24, 24, 1)
    with pytest.raises(ValueError, match="fit neither"):
        llava_grid(336, 14, 500)


def test_merged_grid_from_image_grid_thw():
    assert merged_grid((1, 6, 8), 2) == (3, 4)
    with pytest.raises(ValueError, match="t must be 1"):
        merged_grid((2, 6, 8), 2)
    with pytest.raises(ValueError, match="not divisible"):
        merged_grid((1, 5, 8), 2)


@pytest.mark.parametrize(
    ("grid_h", "grid_w", "row", "col"), [(4, 4, 1, 2), (3, 4, 2, 0), (4, 8, 0, 7)]
)
def test_resize_keeps_a_planted_cell_in_its_box(grid_h, grid_w, row, col):
    size = 32
    grid = torch.zeros(grid_h, grid_w)
    grid[row, col] = 1.0
    out = resize_maps(grid, size)
    assert out.shape == (size, size)
    r0, r1, c0, c1 = cell_box(row, col, grid_h, grid_w, size)
    peak = divmod(int(out.argmax()), size)
    assert r0 <= peak[0] < r1 and c0 <= peak[1] < c1
    inside = out[r0:r1, c0:c1].sum()
    assert inside > 0.5 * out.sum()


def test_resize_is_identity_at_size_and_keeps_constants():
    maps = torch.rand(2, 32, 32)
    assert torch.equal(resize_maps(maps, 32), maps)
    flat = resize_maps(torch.full((5, 7), 0.25), 32)
    assert torch.allclose(flat, torch.full((32, 32), 0.25))


def test_cell_box_covers_at_least_one_cell_for_fine_grids():
    assert cell_box(1, 2, 4, 4, 32) == (8, 16, 16, 24)
    assert cell_box(10, 79, 40, 80, 32) == (8, 9, 31, 32)
    assert cell_box(2, 0, 3, 4, 32) == (21, 32, 0, 8)
