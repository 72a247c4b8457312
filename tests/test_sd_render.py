"""The show-targets picture and the row form of `SDTarget`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from lavender_ray.pictures import CAPTION, CELL, MARGIN, heat_colors, overlay, render_target
from lavender_ray.schema import TARGET_SCHEMA
from lavender_ray.sd.target import SDTarget, with_targets


def left_half_map(size: int = 32) -> np.ndarray:
    word_map = np.zeros((size, size), np.float32)
    word_map[:, : size // 2] = 1.0
    return word_map


def test_heat_colors_run_from_dark_to_bright() -> None:
    colors = heat_colors(np.array([0.0, 0.5, 1.0, 7.0]))
    assert colors.dtype == np.uint8 and colors.shape == (4, 3)
    brightness = colors.astype(int).sum(axis=1)
    assert brightness[0] < brightness[1] < brightness[2] == brightness[3]  # clipped above 1


def test_overlay_is_bright_where_the_map_is_high() -> None:
    grey = Image.new("RGB", (40, 40), (128, 128, 128))
    picture = np.asarray(overlay(grey, left_half_map()), np.float32)
    assert picture.shape == (CELL, CELL, 3)
    assert picture[:, : CELL // 4].mean() > picture[:, -CELL // 4 :].mean() + 60


def test_overlay_keeps_the_aspect_ratio_and_puts_the_map_over_the_whole_image() -> None:
    """A 2:1 image is shown 2:1 (white above and below), and the map's last column lands on the
    image's right edge: the map covers the image, not a square cut out of it."""
    wide = Image.new("RGB", (200, 100), (128, 128, 128))
    word_map = np.zeros((32, 32), np.float32)
    word_map[:, -1] = 1.0  # the rightmost frame column
    picture = np.asarray(overlay(wide, word_map), np.float32)  # [CELL, CELL, 3]
    top, bottom = CELL // 4, CELL - CELL // 4  # the image's rows in the cell
    assert picture[: top - 2].min() == 255 and picture[bottom + 2 :].min() == 255  # white bands
    image_rows = picture[top + 2 : bottom - 2]
    right, middle = image_rows[:, -3:].mean(), image_rows[:, CELL // 2].mean()
    assert right > middle + 40, (right, middle)


def test_render_target_lays_out_image_and_one_cell_per_word() -> None:
    maps = np.stack([left_half_map(), left_half_map()[:, ::-1]])
    image = Image.new("RGB", (64, 48), "white")
    picture = render_target(image, "a red dog", ["red", "dog"], maps, columns=2)
    rows = 2  # image + 2 words in 2 columns
    assert picture.width == 2 * (CELL + MARGIN) + MARGIN
    assert picture.height > rows * (CELL + CAPTION + MARGIN)
    with pytest.raises(ValueError, match="2 words but 1 maps"):
        render_target(Image.new("RGB", (8, 8)), "x", ["red", "dog"], maps[:1])


def test_target_row_round_trip_and_validation() -> None:
    maps = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    target = SDTarget(["red", "dog"], [(2, 5), (6, 9)], maps, 1, "h")
    back = SDTarget.from_row(target.to_row())
    assert back.words == target.words and back.spans == target.spans and back.words_cut == 1
    np.testing.assert_allclose(back.maps, maps, atol=1e-3)  # float16 storage
    with pytest.raises(ValueError, match=r"maps must be \[3, S, S\]"):
        SDTarget(["a", "b", "c"], [(0, 1)] * 3, maps, 0, "h")


def test_with_targets_appends_the_schema_columns() -> None:
    target = SDTarget(["red"], [(0, 3)], np.zeros((1, 32, 32), np.float32), 0, "h")
    names = ("id", "source", "image", "messages", "target_text")
    records = pa.table({n: pa.array([None], type=TARGET_SCHEMA.field(n).type) for n in names})
    table = with_targets(records, [target])
    assert table.schema.equals(TARGET_SCHEMA)
    with pytest.raises(ValueError, match="1 rows but 2 targets"):
        with_targets(records, [target, target])


def test_probe_rows_are_as_tall_as_the_image_shown() -> None:
    """A 4:1 image makes rows a quarter of a cell tall (no white band around each row), and
    the SD panel's hot left half sits over the image's left half."""
    from lavender_ray.pictures import ProbeSample, render_probe

    hot_left = np.zeros((1, 8, 8), np.float32)
    hot_left[:, :, :4] = 1.0
    heights = {}
    for shape in [(64, 64), (256, 64)]:
        sample = ProbeSample("r", Image.new("RGB", shape, (128, 128, 128)), "a", ["a"],
                             {"SD": hot_left})
        heights[shape] = render_probe(sample).height
    header_and_margins = heights[(64, 64)] - CELL
    assert heights[(256, 64)] - header_and_margins == CELL // 4
    grid = np.asarray(render_probe(sample).convert("L"), np.float32)
    row = grid[-MARGIN - CELL // 8]  # the middle of the only row
    panel = row[-MARGIN - CELL:-MARGIN]
    assert panel[: CELL // 2].mean() > panel[CELL // 2:].mean() + 30
