"""The show-targets picture, the fonts of its labels and the row form of `SDTarget`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from lavender_ray import pictures
from lavender_ray.pictures import (
    CAPTION,
    CELL,
    MARGIN,
    font_for,
    heat_colors,
    missing_glyphs,
    overlay,
    render_target,
)
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


def caption_pixels(word: str) -> np.ndarray:
    """The caption strip under the one word cell of `render_target`, greyscale."""
    picture = render_target(Image.new("RGB", (8, 8)), "x", [word], np.zeros((1, 8, 8)), 2)
    strip = np.asarray(picture.convert("L"))[-CAPTION - MARGIN:]
    return strip[:, CELL + 2 * MARGIN:]


def test_word_captions_sit_on_one_baseline() -> None:
    """"the" and "ace" (no descender) end on the same row, whatever their tallest letter: the
    captions hung from their own top put "ace" lower by the height of "h" over "a"."""
    def last_ink_row(word: str) -> int:
        return int(np.nonzero((caption_pixels(word) < 128).any(axis=1))[0].max())

    assert last_ink_row("the") == last_ink_row("ace") == last_ink_row("Tall")


@pytest.mark.parametrize("text", ["café", "naïve — “Zürich”", "Ελληνικά", "кириллица"])
def test_labels_of_real_captions_are_drawn_with_a_font_that_has_their_letters(text) -> None:
    """Pillow's own font has ASCII only: "é", "—" or Greek came out as boxes. Labels take the
    first font on the machine with every glyph (DejaVu Sans, which matplotlib ships too)."""
    assert missing_glyphs(font_for(text, 14), text) == []
    # the caption of a word with "é" is not the caption with a missing glyph in its place
    assert not np.array_equal(caption_pixels("café"), caption_pixels("caf\uffff"))


def test_a_label_no_font_can_draw_falls_back_and_says_so_once(monkeypatch, caplog) -> None:
    """With no font files (or ones that cannot be opened), Pillow's own font draws; what it has
    no glyph for is named once per process, with the code point."""
    monkeypatch.setattr(pictures, "font_files", lambda: ("/nowhere/NoSuchFont.ttf",))
    monkeypatch.setattr(pictures, "_TOLD_MISSING", [])
    font_for.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="lavender_ray.pictures"):
            font = font_for("café", 14)
            font_for("日本", 14)
        assert font.getname()[0] == "Aileron" and missing_glyphs(font, "a dog") == []
        [warning] = [r.getMessage() for r in caplog.records]
        assert "'é' (U+00E9)" in warning and "'café'" in warning
    finally:
        font_for.cache_clear()


def test_font_files_put_the_wide_coverage_fonts_first_and_skip_last_resort(monkeypatch,
                                                                           tmp_path) -> None:
    for name in ("AAA-Bold.ttf", "LastResortHE-Regular.ttf", "wqy-microhei.ttc",
                 "DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "notes.txt"):
        (tmp_path / "sub" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "sub" / name).write_bytes(b"")
    monkeypatch.setattr(pictures, "FONT_DIRS", (str(tmp_path),))
    monkeypatch.setattr(pictures.importlib.util, "find_spec", lambda name: None)
    pictures.font_files.cache_clear()
    try:
        names = [Path(f).name for f in pictures.font_files()]
    finally:
        pictures.font_files.cache_clear()
    assert names == ["DejaVuSans.ttf", "wqy-microhei.ttc", "AAA-Bold.ttf", "DejaVuSans-Bold.ttf"]


@pytest.mark.parametrize("text", [
    "The 3-year-old café owner's bike leans on a red-and-white striped wall — by the sea.",
    # no spaces: broken inside the word; 160 characters overflow two lines even where no font
    # has CJK glyphs (Pillow then draws a ~4-px box for each)
    "日本の猫がいる。" * 20,
    "W" * 80])
def test_wrapped_lines_fit_their_width_in_the_font_that_draws_them(text) -> None:
    lines = pictures.wrap_to_width(text, 184, 11, max_lines=2)
    assert 1 <= len(lines) <= 2
    assert all(font_for(line, 11).getlength(line) <= 184 for line in lines), lines
    assert "".join(lines).replace(" ", "")[:10] == text.replace(" ", "")[:10]
    assert "".join(lines).replace(" ", "").rstrip("…") in text.replace(" ", "")  # nothing else
    assert lines[-1].endswith("…")  # every text here is longer than two lines
