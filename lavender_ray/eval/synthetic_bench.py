"""A synthetic benchmark from the synthetic data set's scenes, written in every benchmark format.

Rows cycle through three kinds of question about a scene of `lavender_ray.data.synthetic`
(two coloured shapes, e.g. "a red circle to the left of a blue square")::

    color     multiple choice   "What color is the circle?"            A-D colours, answer letter
    shape     short answer      "What shape is the red object?"        answer "circle"
    position  multiple choice   "Where is the red circle relative to   A-D relations, with a hint
                                 the blue square?"

The images cycle through the data set's aspect ratios (`data.synthetic.ASPECT_RATIOS`). The
same `(n, seed, image_size)` gives the same rows. `write_benchmark_files` writes benchmark
rows (`schema.BENCHMARK_SCHEMA`) in the three layouts `lavender_ray.data.benchmarks` reads:

- ``.tsv``: VLMEvalKit's layout: `index, image (base64), question, A, B, ..., answer, category,
  <extras>`; every field quoted; an open question's options are empty cells; `answer` is the
  answer, or a Python list literal when a row accepts several.
- ``.parquet``: `id, image (bytes), question, options (JSON object), answers (list), category,
  <extras>`.
- ``.jsonl``: one object per line: `index, image (base64), question, options (object),
  answers (list), category, <extras>`.
"""

from __future__ import annotations

import base64
import csv
import json
import random
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lavender_ray.data.synthetic import (
    ASPECT_RATIOS,
    COLORS,
    RELATIONS,
    Scene,
    draw_scene,
    image_shape,
    png_bytes,
    sample_scene,
)
from lavender_ray.schema import make_benchmark_row

BENCHMARK_FORMATS = ("tsv", "parquet", "jsonl")
POSITION_HINT = "The image shows two coloured shapes on a grey background."
NUM_OPTIONS = 4


def _options(correct: str, pool: Sequence[str], rng: random.Random) -> tuple[dict[str, str], str]:
    """NUM_OPTIONS shuffled choices from `pool` including `correct` -> (letter -> text, letter)."""
    choices = [correct, *rng.sample([p for p in pool if p != correct], NUM_OPTIONS - 1)]
    rng.shuffle(choices)
    options = dict(zip(string.ascii_uppercase, choices))
    return options, string.ascii_uppercase[choices.index(correct)]


def question_for(kind: str, scene: Scene, rng: random.Random) -> dict[str, Any]:
    """The question, options, answers, category and extras of one row of `kind`."""
    (c1, s1), (c2, s2) = scene.first, scene.second
    if kind == "color":
        options, letter = _options(c1, sorted(COLORS), rng)
        return {"question": f"What color is the {s1}?" if s1 != s2 else
                f"What color is the {s1} {scene.relation} the other {s2}?",
                "options": options, "answers": [letter], "category": "color", "extras": {}}
    if kind == "shape":
        return {"question": f"What shape is the {c1} object?", "options": {},
                "answers": [s1], "category": "shape", "extras": {}}
    options, letter = _options(scene.relation, sorted(RELATIONS), rng)
    return {"question": f"Where is the {c1} {s1} relative to the {c2} {s2}?", "options": options,
            "answers": [letter], "category": "position", "extras": {"hint": POSITION_HINT}}


QUESTION_KINDS = ("color", "shape", "position")


def synthetic_benchmark_rows(n: int, seed: int = 0, image_size: int = 96) -> list[dict[str, Any]]:
    """`n` benchmark rows (`BENCHMARK_SCHEMA`), kinds cycling color, shape, position; ids
    "0".."n-1" (VLMEvalKit's integer `index`)."""
    if n <= 0:
        raise ValueError(f"a synthetic benchmark needs n > 0 rows, got {n}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = sample_scene(rng)
        parts = question_for(QUESTION_KINDS[i % len(QUESTION_KINDS)], scene, rng)
        shape = image_shape(image_size, ASPECT_RATIOS[i % len(ASPECT_RATIOS)])
        rows.append(make_benchmark_row(id=str(i), image=png_bytes(draw_scene(scene, shape)),
                                       **parts))
    return rows


# ---------------------------------------------------------------------------------- writers
def _decoded(row: dict[str, Any]) -> tuple[dict[str, str], list[str], dict[str, Any]]:
    """A `BENCHMARK_SCHEMA` row's JSON columns -> (options, answers, extras)."""
    return json.loads(row["options"]), json.loads(row["answers"]), json.loads(row["extras"])


def _extra_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({key for row in rows for key in json.loads(row["extras"])})


def write_tsv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """VLMEvalKit TSV (see the module docstring)."""
    letters = sorted({k for row in rows for k in json.loads(row["options"])})
    extra_keys = _extra_keys(rows)
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(["index", "image", "question", *letters, "answer", "category", *extra_keys])
        for row in rows:
            options, answers, extras = _decoded(row)
            answer = answers[0] if len(answers) == 1 else repr(answers)
            writer.writerow([
                row["id"], base64.b64encode(row["image"]).decode("ascii"), row["question"],
                *(options.get(letter, "") for letter in letters), answer, row["category"],
                *(str(extras.get(key, "")) for key in extra_keys),
            ])  # fmt: skip
    return path


def write_parquet(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Parquet with `options` as JSON text and `answers` as a list (see the module docstring)."""
    extra_keys = _extra_keys(rows)
    columns: dict[str, list[Any]] = {
        "id": [r["id"] for r in rows],
        "image": [r["image"] for r in rows],
        "question": [r["question"] for r in rows],
        "options": [r["options"] for r in rows],
        "answers": [json.loads(r["answers"]) for r in rows],
        "category": [r["category"] for r in rows],
    }
    for key in extra_keys:
        columns[key] = [json.loads(r["extras"]).get(key) for r in rows]
    path = Path(path)
    pq.write_table(pa.table(columns), path)
    return path


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """JSON lines with a base64 image (see the module docstring)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            options, answers, extras = _decoded(row)
            line = {"index": row["id"], "image": base64.b64encode(row["image"]).decode("ascii"),
                    "question": row["question"], "options": options, "answers": answers,
                    "category": row["category"], **extras}
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


WRITERS = {"tsv": write_tsv, "parquet": write_parquet, "jsonl": write_jsonl}


def write_benchmark_files(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, stem: str
) -> dict[str, Path]:
    """`rows` as `<out_dir>/<stem>.tsv`, `.parquet` and `.jsonl`; returns format -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {fmt: WRITERS[fmt](rows, out / f"{stem}.{fmt}") for fmt in BENCHMARK_FORMATS}


def write_synthetic_benchmark(
    out_dir: str | Path, n: int, seed: int = 0, image_size: int = 96
) -> dict[str, Path]:
    """The synthetic benchmark of `n` rows in every format under `out_dir` (`synthetic.<fmt>`)."""
    rows = synthetic_benchmark_rows(n, seed, image_size)
    return write_benchmark_files(rows, out_dir, "synthetic")
