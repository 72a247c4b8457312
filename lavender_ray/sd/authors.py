"""The layout of the Lavender authors' released SD maps, read and written both ways::

    <root>/<image name>/lpm_attention/<stem>/attention_<word>.jpg

`<image name>` is the image's file name (e.g. `1000092795.jpg`), `<stem>` that name up to its
first dot, each file a 32x32 8-bit grayscale JPEG, loaded to [0, 1] as `value / 255` (the
authors' `ToTensor()`). Their loader merges every `<stem>` folder under `lpm_attention` and takes
the word from the file name between `attention_` and the extension; so does `read_word_maps`.

Maps are written with JPEG quality `JPEG_QUALITY` (lossy: a round trip is exact to about 1/255
on smooth maps, not bit-exact). Local paths only (the authors' layout is a folder tree).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from lavender_ray.sd.prompt import find_words
from lavender_ray.sd.target import SDTarget

ATTENTION_DIR = "lpm_attention"
FILE_PATTERN = re.compile(r"^attention_([^_.]+)\.jpg$")
JPEG_QUALITY = 95
AUTHORS_HASH = "authors"  # config hash given to targets read from the authors' layout
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def image_name_for(record_id: str) -> str:
    """The `<image name>` of a record: its id with `/` made safe, `.jpg` added unless the id
    already ends with an image suffix."""
    name = record_id.replace("/", "_").replace("\\", "_")
    return name if name.lower().endswith(IMAGE_SUFFIXES) else f"{name}.jpg"


def stem_of(image_name: str) -> str:
    """The authors' stem: the image name up to its first dot."""
    return image_name.split(".")[0]


def write_word_maps(
    root: str | Path, image_name: str, words: list[str], maps: np.ndarray
) -> list[Path]:
    """Write maps [n_words, S, S] in [0, 1] as `attention_<word>.jpg` files; returns the paths."""
    if len(words) != len(maps):
        raise ValueError(f"{len(words)} words but {len(maps)} maps")
    folder = Path(root) / image_name / ATTENTION_DIR / stem_of(image_name)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for word, word_map in zip(words, maps):
        if not FILE_PATTERN.match(f"attention_{word}.jpg"):
            raise ValueError(f"word {word!r} cannot be a file name in the authors' layout")
        pixels = np.clip(np.rint(np.asarray(word_map, dtype=np.float32) * 255.0), 0, 255)
        path = folder / f"attention_{word}.jpg"
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(path, quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def read_word_maps(root: str | Path, image_name: str) -> dict[str, np.ndarray]:
    """word -> float32 [S, S] in [0, 1] for one image (empty when it has no maps)."""
    base = Path(root) / image_name / ATTENTION_DIR
    maps: dict[str, np.ndarray] = {}
    if not base.is_dir():
        return maps
    for path in sorted(base.glob("*/attention_*.jpg")):
        match = FILE_PATTERN.match(path.name)
        if match:
            with Image.open(path) as image:
                maps[match.group(1)] = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return maps


def target_from_word_maps(word_to_map: dict[str, np.ndarray], text: str | None = None) -> SDTarget:
    """Word maps read from the authors' layout -> `SDTarget`. With the target `text`, words are
    ordered by first occurrence with their spans; words not found in it (and all words without a
    text) follow in sorted order with span (-1, -1)."""
    first: dict[str, tuple[int, int]] = {}
    for occurrence in find_words(text or ""):
        first.setdefault(occurrence.key, (occurrence.start, occurrence.end))
    located = [w for w in first if w in word_to_map]
    rest = sorted(set(word_to_map) - set(located))
    words = located + rest
    spans = [first[w] for w in located] + [(-1, -1)] * len(rest)
    maps = (
        np.stack([word_to_map[w] for w in words]).astype(np.float32)
        if words
        else np.zeros((0, 32, 32), np.float32)
    )
    return SDTarget(words, spans, maps, 0, AUTHORS_HASH)


def export_targets(rows: list[dict], root: str | Path) -> int:
    """Target rows (record `id` + target columns) -> the authors' layout; returns rows written."""
    for row in rows:
        target = SDTarget.from_row(row)
        write_word_maps(root, image_name_for(str(row["id"])), target.words, target.maps)
    return len(rows)
