"""Pictures of attention maps: heat overlays on the image, the SD-target sheet, the per-word
probe grid and shared drawing helpers (used by `lavender show-targets`, the evaluation probes,
the trainer's attention PNGs and `lavender data inspect`).

Pure PIL + numpy. `render_target(image, text, words, maps)` returns a PIL image laid out as::

    | target text (wrapped)                                  |
    | image | overlay word 1 | overlay word 2 | ...          |   (rows of `columns` cells)
    | image |  "word 1"      |  "word 2"      |              |

`render_probe(sample)` draws a `ProbeSample` (one sample's words and their maps per panel) as
one row per word: the word | image | one heat overlay per panel (SD | VLM | aligned, ...).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

CELL = 160
CAPTION = 22
MARGIN = 6
OVERLAY_ALPHA = 0.55
LABEL_W = 110  # the word column of `render_probe`
# control points of a black-body-like heat colour map: positions in [0, 1] and their RGB
HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
HEAT_RGB = np.array(
    [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32
)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape [...] -> uint8 RGB [..., 3] on the heat colour map."""
    v = np.clip(values, 0.0, 1.0).astype(np.float32)
    channels = [np.interp(v, HEAT_STOPS, HEAT_RGB[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def fit_cell(
    image: Image.Image, size: int = CELL
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A white `size` x `size` cell with the image at its own aspect ratio, as large as fits,
    centred; and the image's box in the cell (left, top, right, bottom)."""
    shown = ImageOps.contain(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    cell = Image.new("RGB", (size, size), (255, 255, 255))
    left, top = (size - shown.width) // 2, (size - shown.height) // 2
    cell.paste(shown, (left, top))
    return cell, (left, top, left + shown.width, top + shown.height)


def overlay(image: Image.Image, word_map: np.ndarray, size: int = CELL) -> Image.Image:
    """The image at its own aspect ratio in a `size` x `size` cell, blended with the map [S, S]
    as heat over the region the map describes: the whole image (the frame, METHOD.md section
    3a), so the map is stretched to the image's shape."""
    cell, box = fit_cell(image, size)
    shown = cell.crop(box)
    heat_small = Image.fromarray(np.clip(word_map * 255.0, 0, 255).astype(np.uint8), mode="L")
    heat = heat_small.resize(shown.size, Image.Resampling.BILINEAR)
    colored = Image.fromarray(heat_colors(np.asarray(heat, np.float32) / 255))
    cell.paste(Image.blend(shown, colored, OVERLAY_ALPHA), box[:2])
    return cell


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font has one size
        return ImageFont.load_default()


def render_target(
    image: Image.Image,
    text: str,
    words: list[str],
    maps: np.ndarray,
    columns: int = 5,
    title: str | None = None,
) -> Image.Image:
    """One PNG-ready picture of a sample: the image and a captioned heat overlay per word."""
    if len(words) != len(maps):
        raise ValueError(f"{len(words)} words but {len(maps)} maps")
    cells = [(fit_cell(image)[0], "image")]
    cells += [(overlay(image, m), w) for w, m in zip(words, maps)]
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    font = load_font(14)
    heading = f"{title}: {text}" if title else text
    header = textwrap.wrap(heading, width=columns * CELL // 8) or [""]
    header_h = 18 * len(header) + MARGIN
    width = columns * (CELL + MARGIN) + MARGIN
    height = header_h + rows * (CELL + CAPTION + MARGIN) + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(header):
        draw.text((MARGIN, MARGIN + 18 * i), line, fill=(0, 0, 0), font=font)
    for index, (picture, caption) in enumerate(cells):
        x = MARGIN + (index % columns) * (CELL + MARGIN)
        y = header_h + (index // columns) * (CELL + CAPTION + MARGIN)
        canvas.paste(picture, (x, y))
        draw.text((x + CELL // 2, y + CELL + 3), caption, fill=(0, 0, 0), font=font, anchor="mt")
    return canvas


@dataclass
class ProbeSample:
    """One record's words with their maps, each float32 [n, s, s] in [0, 1]."""

    record_id: str
    image: Image.Image
    text: str
    words: list[str]
    maps: dict[str, np.ndarray]  # panel name ("SD", "VLM", "aligned", ...) -> [n, s, s]


def render_probe(sample: ProbeSample, panels: list[str] | None = None) -> Image.Image:
    """A grid: one row per word; columns = the image, then one heat overlay per panel. Rows are
    as tall as the image shown at its aspect ratio (a wide image makes short rows)."""
    panels = panels or list(sample.maps)
    font = load_font(14)
    header = 22
    cols = 1 + len(panels)
    thumb, (_, top, _, bottom) = fit_cell(sample.image)
    band = (0, top, CELL, bottom)  # the rows of a cell the image covers
    row = max(bottom - top, 18)
    width = LABEL_W + cols * (CELL + MARGIN) + MARGIN
    height = header * 2 + len(sample.words) * (row + MARGIN) + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), f"{sample.record_id}: {sample.text}", fill=(0, 0, 0), font=font)
    for c, name in enumerate(["image", *panels]):
        x = LABEL_W + c * (CELL + MARGIN) + CELL // 2
        draw.text((x, header + 4), name, fill=(0, 0, 0), font=font, anchor="mt")
    for r, word in enumerate(sample.words):
        y = header * 2 + r * (row + MARGIN)
        draw.text((MARGIN, y + row // 2), word, fill=(0, 0, 0), font=font, anchor="lm")
        canvas.paste(thumb.crop(band), (LABEL_W, y))
        for c, name in enumerate(panels, start=1):
            cell = overlay(sample.image, sample.maps[name][r]).crop(band)
            canvas.paste(cell, (LABEL_W + c * (CELL + MARGIN), y))
    return canvas
