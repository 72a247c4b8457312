"""One frame for every map (METHOD.md section 3a): the SD target and the VLM map of every
registered family describe the same pixels of images of any shape.

The VLM side is checked through each family's real processor at the released model's image
geometry (`build_tiny(..., real_geometry=True)`: 560 px Mllama tiles, LLaVA-1.5's 336 px,
Qwen2-VL's pixel budget): a bright blob is drawn at a known point, found again in what the
processor fed the model (`patch_pixels`), attention is planted on that patch's key, and the map
the adapter lays out must peak in the frame cell of the point. The SD side is checked through
`to_model_input`, which makes SD's input.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from lavender_ray.families import registered_families
from lavender_ray.frame import frame_cell
from lavender_ray.sd.extractor import sd_point_cell, to_model_input
from lavender_ray.tensors import axis_weights, resize_maps
from lavender_ray.vlm.registry import adapter_class, build_tiny

SIZE = 32
CONVERSATION = [[{"role": "user", "content": "Describe the image."},
                 {"role": "assistant", "content": "A dog."}]]
# aspect ratios 4:3, 3:4, 3:2, 2:1, 1:4, 1:1, and Mllama canvases of 1x1, 1x2, 2x2, 4x1, 1x4 tiles
IMAGE_SIZES = [(500, 375), (600, 800), (900, 600), (1200, 600), (400, 1600), (1000, 1000),
               (2240, 560)]  # fmt: skip
POINTS = [(0.5, 0.5), (0.08, 0.1), (0.92, 0.9), (0.1, 0.88), (0.9, 0.12), (0.3, 0.7)]


def blob_image(width: int, height: int, x: float, y: float) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 0))  # darker than any processor's padding
    r = max(6, round(0.02 * max(width, height)))  # a few pixels even at 1600 px -> 336 px
    ImageDraw.Draw(image).ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
    return image


def inside_box(layout, margin: float = 0.0) -> torch.Tensor:
    """`[gh, gw]` bool: the patches of the layout that reach more than `margin` of a patch into
    the image's box (0: any overlap; 0.5: the patch's centre lies in the image)."""
    top, left, bottom, right = layout.box
    rows = torch.arange(layout.keys.shape[0])
    cols = torch.arange(layout.keys.shape[1])
    return (((rows + 1 > top + margin) & (rows + margin < bottom))[:, None]
            & ((cols + 1 > left + margin) & (cols + margin < right)))


def centre(values: torch.Tensor) -> tuple[float, float]:
    """(row, col) of the centre of the bright part of a 2-D map (above half its range), in
    cell units: cell (i, j) spans [i, i+1) x [j, j+1)."""
    weights = (values - values.min() - 0.5 * (values.max() - values.min())).clamp(min=0)
    rows = torch.arange(values.shape[0], dtype=weights.dtype) + 0.5
    cols = torch.arange(values.shape[1], dtype=weights.dtype) + 0.5
    total = weights.sum()
    return (float((weights.sum(1) * rows).sum() / total),
            float((weights.sum(0) * cols).sum() / total))


@pytest.fixture(scope="module", params=registered_families())
def real_adapter(request):
    """The family's adapter around a tiny model with the released model's image geometry."""
    model, processor = build_tiny(f"tiny/{request.param}", seed=0, real_geometry=True)
    return adapter_class(request.param)(model, processor, max_length=8192)


def key_count(adapter, inputs) -> int:
    """K of a captured layer: the largest key index of the layout + 1, or the sequence."""
    return max(int(adapter.key_layout(inputs, 0).keys.max()) + 1, inputs["input_ids"].shape[1])


def tolerance(extent: float) -> int:
    """Cells a registration may be off along an axis over which the image spans `extent` of the
    model's patches: 1, or half a patch where one patch covers more than two frame cells (e.g.
    LLaVA's 24x24 grid gives a 1:4 image 6 tokens across, 5.3 frame cells each)."""
    return max(1, math.ceil(SIZE / extent / 2))


def test_the_sd_input_is_the_whole_image_stretched():
    """No crop: a blob at each corner of a non-square image is still in SD's input, and every
    point lands in its frame cell."""
    for width, height in IMAGE_SIZES:
        for fx, fy in [(0.04, 0.04), (0.96, 0.04), (0.04, 0.96), (0.96, 0.96), (0.3, 0.7)]:
            x, y = fx * width, fy * height
            pixels = to_model_input([blob_image(width, height, x, y)], 512)[0].mean(0)  # [S, S]
            assert pixels.max() > 0.9, ("blob cropped away", width, height, fx, fy)
            py, px = centre(pixels)
            row, col = frame_cell(x, y, width, height, SIZE)
            assert abs(int(py * SIZE / 512) - row) <= 1 and abs(int(px * SIZE / 512) - col) <= 1
            for side in (16, 32, 64):
                cell = sd_point_cell(x, y, width, height, 512, SIZE, side)
                assert abs(cell[0] - row) <= 1 and abs(cell[1] - col) <= 1, (side, cell)


@pytest.mark.parametrize(("width", "height"), IMAGE_SIZES)
def test_a_point_lands_in_the_same_cell_of_the_vlm_and_the_sd_frame(real_adapter, width, height):
    """Attention on what the model sees of a blob peaks where the blob is in the frame, and
    where the SD input puts it; `point_cell` names that cell."""
    adapter = real_adapter
    for fx, fy in POINTS:
        x, y = fx * width, fy * height
        truth = (SIZE * y / height, SIZE * x / width)  # continuous frame position, in cells
        image = blob_image(width, height, x, y)
        inputs = adapter.build_inputs([image], CONVERSATION)
        layout = adapter.key_layout(inputs, 0)
        seen = adapter.patch_pixels(inputs, 0).mean(0)  # [gh, gw]: what the model sees where
        image_patches = inside_box(layout, margin=0.5)  # not the processor's padding
        blob = (seen - seen[image_patches].min()).clamp(min=0) * image_patches  # [gh, gw]
        probs = torch.zeros(1, 1, key_count(adapter, inputs), dtype=torch.float64)  # [H, q, K]
        probs[0, 0, layout.keys.flatten()] = blob.flatten().double()
        vlm = centre(adapter.sample_maps(probs, inputs, 0, SIZE)[0, 0])
        sd_pixels = to_model_input([image], 512)[0].mean(0)  # [512, 512]
        sd = tuple(SIZE * v / 512 for v in centre(sd_pixels))
        top, left, bottom, right = layout.box
        tol = (tolerance(bottom - top), tolerance(right - left))
        cell = adapter.point_cell(inputs, 0, x, y, SIZE)
        for axis in (0, 1):
            assert abs(vlm[axis] - truth[axis]) <= tol[axis], (fx, fy, vlm, truth, tol)
            assert abs(sd[axis] - truth[axis]) <= 1, (fx, fy, sd, truth)
            assert abs(vlm[axis] - sd[axis]) <= tol[axis] + 1, (fx, fy, vlm, sd)
            assert abs(cell[axis] + 0.5 - truth[axis]) <= tol[axis] + 0.5, (fx, fy, cell, truth)


@pytest.mark.parametrize(("width", "height"), [(1200, 600), (1000, 1000), (2240, 560)])
def test_every_patch_of_the_image_reaches_the_map_and_gets_gradient(real_adapter, width, height):
    """Mllama canvases of 1x2, 2x2 and 1x4 tiles (and the other families' grids of the same
    images): every patch inside the image's box has weight and gradient; padding has none."""
    adapter = real_adapter
    inputs = adapter.build_inputs([blob_image(width, height, 10, 10)], CONVERSATION)
    layout = adapter.key_layout(inputs, 0)
    probs = torch.rand(1, 2, key_count(adapter, inputs), dtype=torch.float64, requires_grad=True)
    adapter.sample_maps(probs, inputs, 0, SIZE).sum().backward()
    grad = probs.grad[0, 0][layout.keys]  # [gh, gw]
    inside = inside_box(layout)
    assert bool((grad[inside] > 0).all()), f"{int((grad[inside] == 0).sum())} dead patches"
    assert bool((grad[~inside] == 0).all()), "padding reached the map"


def test_resampling_grows_bilinear_and_shrinks_by_area():
    maps = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    expected = F.interpolate(maps, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_maps(maps, SIZE), expected)
    for cells in (40, 80, 120, 160):  # 1 to 4 Mllama tiles across
        weights = axis_weights(cells, 0.0, float(cells), SIZE)
        assert bool((weights.sum(0) > 0).all()), "a cell without weight"
        torch.testing.assert_close(weights.sum(1), torch.ones(SIZE, dtype=torch.float64))
        torch.testing.assert_close(weights.sum(0), torch.full((cells,), SIZE / cells,
                                                              dtype=torch.float64))
    # a box ending inside a cell: that cell counts by the part inside
    weights = axis_weights(40, 0.0, 30.5, SIZE)
    assert weights[:, 30].sum() > 0 and weights[:, 31:].sum() == 0


def test_frame_cells_cover_the_image():
    assert frame_cell(0, 0, 640, 480) == (0, 0)
    assert frame_cell(639.9, 479.9, 640, 480) == (31, 31)
    assert frame_cell(320, 240, 640, 480) == (16, 16)
    with pytest.raises(ValueError, match="outside"):
        frame_cell(640, 10, 640, 480)
