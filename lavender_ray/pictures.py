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

import importlib.util
import logging
import textwrap
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

log = logging.getLogger(__name__)

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


# Where fonts are looked for (Linux, macOS, Windows), and matplotlib's own copy of DejaVu Sans
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
             "/System/Library/Fonts", "/Library/Fonts", "~/Library/Fonts", "C:/Windows/Fonts")
# file-name prefixes tried first, in this order: wide coverage (Latin, Greek, Cyrillic), then CJK
PREFERRED_FONTS = ("DejaVuSans.", "NotoSans-Regular.", "LiberationSans-Regular.", "Arial.",
                   "NotoSansCJK", "DroidSansFallback", "wqy-", "Arial Unicode", "ArialUni",
                   "msyh.", "msgothic.")
# matplotlib's Last Resort font "has" every glyph and draws none legibly at these sizes
SKIPPED_FONTS = ("LastResort",)
MAX_FONTS = 64  # fonts a string without a font of its own is tried against
_TOLD_MISSING: list[str] = []  # the first text no font could draw: warned once per process


@cache
def font_files() -> tuple[str, ...]:
    """The font files this machine has, the preferred ones first (see `PREFERRED_FONTS`)."""
    spec = importlib.util.find_spec("matplotlib")  # located, not imported
    roots = [Path(d).expanduser() for d in FONT_DIRS]
    if spec and spec.submodule_search_locations:
        roots += [Path(p) / "mpl-data" / "fonts" / "ttf" for p in spec.submodule_search_locations]
    found = {str(f) for root in roots if root.is_dir() for f in root.rglob("*")
             if f.suffix.lower() in (".ttf", ".otf", ".ttc")
             and not f.name.startswith(SKIPPED_FONTS)}

    def rank(path: str) -> tuple[int, str]:
        name = Path(path).name
        first = [i for i, prefix in enumerate(PREFERRED_FONTS) if name.startswith(prefix)]
        return (first[0] if first else len(PREFERRED_FONTS), name)

    return tuple(sorted(found, key=rank))[:MAX_FONTS]


@cache
def _font(path: str | None, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont | None:
    """The font of `path` at `size` (None: Pillow's own); None where it cannot be opened at that
    size (a bitmap-only emoji font, a broken file)."""
    try:
        return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)
    except (OSError, ValueError):
        return None
    except TypeError:  # Pillow without FreeType: its bitmap font has one size
        return ImageFont.load_default()


def missing_glyphs(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> list[str]:
    """The characters of `text` `font` has no glyph for, in order of first appearance."""
    return [ch for ch in dict.fromkeys(text)
            if (not ch.isspace() or ch == "\xa0") and not _has_glyph(font, ch)]


@cache
def _has_glyph(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, ch: str) -> bool:
    """Whether `font` draws `ch` otherwise than a noncharacter (no font maps U+FFFF: what it
    draws for one is its "missing" box)."""
    return _drawn(font, ch) != _drawn(font, "\uffff")


@cache
def _drawn(font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
           ch: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(ch)
    return mask.size, bytes(mask)


@lru_cache(maxsize=4096)
def font_for(text: str, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The font to draw `text` with at `size`: the first of this machine's fonts (`font_files`)
    with a glyph for every character of it, so a caption with "café", "—" or "日本" is drawn, not
    boxes (Pillow's built-in font has ASCII only). Without one that has them all, the font
    missing the fewest, and a warning (once per process) naming what shows as boxes."""
    best, fewest = None, None
    for path in (*font_files(), None):
        font = _font(path, size)
        if font is None:
            continue
        missing = missing_glyphs(font, text)
        if not missing:
            return font
        if fewest is None or len(missing) < len(fewest):
            best, fewest = font, missing
    if fewest and not _TOLD_MISSING:
        _TOLD_MISSING.append(text)
        named = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in fewest[:5])
        log.warning("no font on this machine draws %s (in %r): labels show boxes for them; "
                    "install a font that has them (for Chinese, Japanese and Korean: Noto Sans "
                    "CJK, `apt install fonts-noto-cjk`)", named, text[:60])
    return best if best is not None else ImageFont.load_default()


def wrap_to_width(text: str, width: int, size: int, max_lines: int | None = None) -> list[str]:
    """`text` wrapped into lines at most `width` pixels wide, each in its font at `size`
    (`font_for`); a word wider than a line is broken. Beyond `max_lines`, the last line is cut to
    end in "…"."""
    def fits(line: str) -> bool:
        return font_for(line, size).getlength(line) <= width

    most = max(1, int(width // font_for("i", size).getlength("i")))  # a line of "i"s
    # the most characters a line can hold whose lines all fit: between 1 and `most`
    low, high = 1, most
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if all(map(fits, textwrap.wrap(text, middle))) else (
            low, middle - 1)
    lines = textwrap.wrap(text, low)
    if max_lines is None or len(lines) <= max_lines:
        return lines
    kept, end = lines[:max_lines - 1], 0
    for ch in "".join(kept).replace(" ", ""):  # where the kept lines end in `text`
        end = text.index(ch, end) + 1
    last = " ".join(text[end:].split())[:most]
    while last and not fits(last + "…"):
        last = last[:-1]
    return [*kept, last.rstrip() + "…"]


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
    heading = f"{title}: {text}" if title else text
    width = columns * (CELL + MARGIN) + MARGIN
    header = wrap_to_width(heading, width - 2 * MARGIN, 14) or [""]
    header_h = 18 * len(header) + MARGIN
    height = header_h + rows * (CELL + CAPTION + MARGIN) + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(header):
        draw.text((MARGIN, MARGIN + 18 * i), line, fill=(0, 0, 0), font=font_for(line, 14))
    for index, (picture, caption) in enumerate(cells):
        x = MARGIN + (index % columns) * (CELL + MARGIN)
        y = header_h + (index // columns) * (CELL + CAPTION + MARGIN)
        canvas.paste(picture, (x, y))
        label = wrap_to_width(caption, CELL, 14, max_lines=1)[0]
        draw.text((x + CELL // 2, y + CELL + 3), label, fill=(0, 0, 0), font=font_for(label, 14),
                  anchor="ma")  # from the font's ascender: every caption on one baseline
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
    header = 22
    cols = 1 + len(panels)
    thumb, (_, top, _, bottom) = fit_cell(sample.image)
    band = (0, top, CELL, bottom)  # the rows of a cell the image covers
    row = max(bottom - top, 18)
    width = LABEL_W + cols * (CELL + MARGIN) + MARGIN
    height = header * 2 + len(sample.words) * (row + MARGIN) + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    heading = wrap_to_width(f"{sample.record_id}: {sample.text}", width - 2 * MARGIN, 14,
                            max_lines=1)[0]  # one line: a long text ends in " ..."
    draw.text((MARGIN, MARGIN), heading, fill=(0, 0, 0), font=font_for(heading, 14))
    for c, name in enumerate(["image", *panels]):
        x = LABEL_W + c * (CELL + MARGIN) + CELL // 2
        draw.text((x, header + 4), name, fill=(0, 0, 0), font=font_for(name, 14), anchor="ma")
    for r, word in enumerate(sample.words):
        y = header * 2 + r * (row + MARGIN)
        label = wrap_to_width(word, LABEL_W - 2 * MARGIN, 14, max_lines=1)[0]
        draw.text((MARGIN, y + row // 2), label, fill=(0, 0, 0), font=font_for(label, 14),
                  anchor="lm")
        canvas.paste(thumb.crop(band), (LABEL_W, y))
        for c, name in enumerate(panels, start=1):
            cell = overlay(sample.image, sample.maps[name][r]).crop(band)
            canvas.paste(cell, (LABEL_W + c * (CELL + MARGIN), y))
    return canvas
