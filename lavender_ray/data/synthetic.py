"""A deterministic synthetic data set: coloured shapes with captions and VQA pairs naming them.

Each image holds two shapes side by side or one above the other, e.g. "a red circle to the left
of a blue square". Every record is a caption sample or a VQA sample (alternating), in the record
schema of `lavender_ray.schema`. The same `(n, seed, image_size, aspect_ratios)` gives the same
bytes.

Images come in several aspect ratios (`ASPECT_RATIOS`, 1:4 to 4:1, cycling over the records;
`image_size` is the long side), so the frame of every map (METHOD.md section 3a) is exercised on
non-square images. The shapes sit at known places: `shape_boxes(scene, width, height)` gives each
one's pixel box (the relation's unit box scaled to the image, the shape kept undistorted, as
large as fits, centred in it).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from lavender_ray.schema import RECORD_SCHEMA, make_record

CAPTION_PROMPT = "Describe the image in a single sentence as a caption."
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
ASPECT_RATIOS = ((1, 1), (4, 3), (3, 4), (2, 1), (1, 2), (4, 1), (1, 4), (3, 2))  # width:height
RELATIONS = {  # relation -> (first shape's box, second shape's box) in unit coordinates
    "to the left of": ((0.06, 0.3, 0.44, 0.7), (0.56, 0.3, 0.94, 0.7)),
    "to the right of": ((0.56, 0.3, 0.94, 0.7), (0.06, 0.3, 0.44, 0.7)),
    "above": ((0.3, 0.06, 0.7, 0.44), (0.3, 0.56, 0.7, 0.94)),
    "below": ((0.3, 0.56, 0.7, 0.94), (0.3, 0.06, 0.7, 0.44)),
}


@dataclass(frozen=True)
class Scene:
    first: tuple[str, str]  # (color, shape)
    second: tuple[str, str]
    relation: str
    background: tuple[int, int, int]

    @property
    def caption(self) -> str:
        (c1, s1), (c2, s2) = self.first, self.second
        return f"A {c1} {s1} {self.relation} a {c2} {s2}."


def sample_scene(rng: random.Random) -> Scene:
    colors = rng.sample(sorted(COLORS), 2)
    shapes = [rng.choice(SHAPES), rng.choice(SHAPES)]
    grey = rng.randint(200, 250)
    return Scene(
        first=(colors[0], shapes[0]),
        second=(colors[1], shapes[1]),
        relation=rng.choice(sorted(RELATIONS)),
        background=(grey, grey, grey),
    )


def image_shape(long_side: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of `long_side` pixels on its long side and aspect `ratio`
    (width:height)."""
    w, h = ratio
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def shape_boxes(scene: Scene, width: int, height: int) -> list[tuple[float, float, float, float]]:
    """Pixel boxes (x0, y0, x1, y1) of the scene's first and second shape in a `width` x
    `height` image: the relation's unit box scaled to the image, then its largest centred square
    (shapes stay undistorted on any aspect ratio)."""
    boxes = []
    for ux0, uy0, ux1, uy1 in RELATIONS[scene.relation]:
        x0, y0, x1, y1 = ux0 * width, uy0 * height, ux1 * width, uy1 * height
        side = min(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        boxes.append((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return boxes


def draw_scene(scene: Scene, size: int | tuple[int, int]) -> Image.Image:
    """The scene on a `size` (width, height) image; an int is a square."""
    width, height = (size, size) if isinstance(size, int) else size
    image = Image.new("RGB", (width, height), scene.background)
    draw = ImageDraw.Draw(image)
    for (color, shape), box in zip((scene.first, scene.second), shape_boxes(scene, width, height)):
        x0, y0, x1, y1 = box
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def vqa_pair(scene: Scene, rng: random.Random) -> tuple[str, str]:
    (c1, s1), (c2, s2) = scene.first, scene.second
    if rng.random() < 0.5:
        return f"What color is the {s1}?", f"The {s1} is {c1}."
    return f"Where is the {c1} {s1}?", f"The {c1} {s1} is {scene.relation} the {c2} {s2}."


def make_synthetic_records(
    n: int,
    seed: int = 0,
    image_size: int = 96,
    aspect_ratios: Sequence[tuple[int, int]] = ASPECT_RATIOS,
) -> list[dict]:
    """`n` records (even index: caption sample, odd: VQA sample), deterministic in `seed`;
    record i is `image_size` pixels on its long side with aspect ratio
    `aspect_ratios[i % len(aspect_ratios)]` (width:height)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        scene = sample_scene(rng)
        shape = image_shape(image_size, aspect_ratios[i % len(aspect_ratios)])
        if i % 2 == 0:
            question, answer = CAPTION_PROMPT, scene.caption
        else:
            question, answer = vqa_pair(scene, rng)
        records.append(
            make_record(
                id=f"synthetic-{seed}-{i:05d}",
                source="synthetic",
                image=png_bytes(draw_scene(scene, shape)),
                messages=[
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
            )
        )
    return records


def write_synthetic_parquet(path: str, n: int, seed: int = 0, image_size: int = 96) -> str:
    """Write `make_synthetic_records(n, seed, image_size)` as one Parquet file in the record
    schema (readable as a `records` source); returns `path`."""
    table = pa.Table.from_pylist(make_synthetic_records(n, seed, image_size), schema=RECORD_SCHEMA)
    pq.write_table(table, path)
    return path
