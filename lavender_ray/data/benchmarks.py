"""Benchmark rows as VLMEvalKit and others write them -> `schema.BENCHMARK_SCHEMA` rows (pure;
`lavender_ray.pipeline.benchmarks` reads the files with Ray Data).

Input formats, chosen by the file's extension (local path or any pyarrow filesystem URI):

- ``.tsv``: VLMEvalKit's layout, as its `pandas.to_csv(sep="\\t")` writes it (quoted fields may
  hold tabs and newlines, NaN is an empty field)::

      index  image  question  A  B  C  D ...  answer  category  hint  l2-category  split ...

  `image` is base64 of the encoded image; a value of at most 64 characters is not an image but
  the `index` of another row whose image it shares (MMBench's circular copies); a value starting
  with ``[`` is a Python list of base64 images (multi-image benchmarks, rejected here). Option
  columns are the single capital letters present in the row (empty = not an option of this
  row). `answer` is a string, or a Python/JSON list literal of accepted answers (TextVQA,
  DocVQA, OCRBench). Every cell is read as a string (no type inference: option "1" stays "1").
- ``.parquet`` / ``.jsonl``: the same columns (a JSONL line is one JSON object). Also accepted:
  `id` for `index`, `options` as a JSON object `{"A": ...}` or a list (lettered A, B, ...),
  `answers` as a list, and `image` as raw bytes or `{"bytes": ...}`.

An image may instead come from `image_path` when `image` is empty: relative to `image_root`
when one is given, else to the benchmark file's folder. Every image is checked as training
images are (`lavender_ray.images.check_image`), so inference never meets one it cannot use.
Everything else (hint, split, l2-category, image_path, ...) goes to `extras` as JSON.
Rows that cannot be used go to the rejects folder (stage "benchmark", source = the benchmark's
name) with one of: bad_json, bad_encoding, bad_row (a TSV line with the wrong number of
fields), missing_id, bad_base64, missing_image, multiple_images, empty_question, bad_options,
missing_answer, and the image reasons of `lavender_ray.data.formats` (remote_image,
unreadable_image, corrupt_image, image_too_small, ...).

"""

from __future__ import annotations

import ast
import base64
import binascii
import json
import math
import string
from collections.abc import Mapping
from typing import Any

from lavender_ray.data.image_refs import CheckImage, ImageLoader, ReadBytes
from lavender_ray.schema import RecordError, make_benchmark_row

BENCHMARK_STAGE = "benchmark"
BENCHMARK_EXTENSIONS = (".tsv", ".parquet", ".jsonl")
IMAGE_REF_MAX_CHARS = 64  # VLMEvalKit: an `image` this short is the index of another row
CORE_COLUMNS = frozenset(
    {"index", "id", "image", "question", "answer", "answers", "options", "category"}
)


# ------------------------------------------------------------------------------ pure converter
def is_missing(value: Any) -> bool:
    """None, NaN and blank strings are missing (pandas writes NaN as an empty TSV field)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def cell_text(value: Any) -> str:
    """A cell as text; an integral float (`1.0`, pandas' NaN-padded int column) prints as `1`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def benchmark_id(row: Mapping[str, Any]) -> str | None:
    """The row's `index` (or `id`) as text, None when it has neither."""
    for key in ("index", "id"):
        if not is_missing(row.get(key)):
            return cell_text(row[key])
    return None


def _literal_list(text: str) -> list[Any] | None:
    """`"['a', 'b']"` (Python or JSON list literal) -> list, None if `text` is not one."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def benchmark_options(row: Mapping[str, Any]) -> dict[str, str]:
    """`options` (object, list or their JSON text) or the A..Z columns -> {"A": text, ...}."""
    options = row.get("options")
    if isinstance(options, str) and not is_missing(options):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as err:
            raise RecordError("bad_options", f"'options' is not JSON: {err}") from None
    if isinstance(options, list):
        if len(options) > len(string.ascii_uppercase):
            raise RecordError("bad_options", f"{len(options)} options; at most 26 (A-Z)")
        options = dict(zip(string.ascii_uppercase, options))
    if isinstance(options, dict):
        return {str(k): cell_text(v) for k, v in options.items() if not is_missing(v)}
    if not is_missing(options):
        raise RecordError(
            "bad_options", f"'options' must be an object or a list, got {options!r:.80}"
        )
    return {k: cell_text(row[k]) for k in string.ascii_uppercase if not is_missing(row.get(k))}


def benchmark_answers(row: Mapping[str, Any]) -> list[str]:
    """`answers` (list) or `answer` (text or a list literal of accepted answers) -> list."""
    value = row.get("answers") if not is_missing(row.get("answers")) else row.get("answer")
    if is_missing(value):
        return []
    if isinstance(value, str):
        value = _literal_list(value.strip()) or [value]
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [cell_text(v) for v in value if not is_missing(v)]


def decode_base64_image(text: str) -> bytes:
    """Base64 text -> bytes, or RecordError('bad_base64')."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RecordError("bad_base64", f"image is not valid base64: {err}") from None


def benchmark_image(
    row: Mapping[str, Any], refs: Mapping[str, str], images: ImageLoader
) -> bytes:
    """The row's encoded image: base64 / reference / bytes in `image`, else `image_path`."""
    image = row.get("image")
    if is_missing(image):
        if is_missing(row.get("image_path")):
            raise RecordError("missing_image", "neither 'image' nor 'image_path'")
        return images(cell_text(row["image_path"]), "image_path")
    if not isinstance(image, str):
        return images(image, "image")
    image = image.strip()
    listed = _literal_list(image)
    if listed is not None:
        if not listed:
            raise RecordError("missing_image", "'image' is an empty list")
        if len(listed) > 1 or not isinstance(listed[0], str):
            raise RecordError(
                "multiple_images", f"{len(listed)} images; one per question is supported"
            )
        image = listed[0]
    if len(image) <= IMAGE_REF_MAX_CHARS:
        if image not in refs:
            raise RecordError(
                "missing_image",
                f"image refers to row {image!r}, which has no image (a file path goes in "
                "'image_path', relative to image_root)",
            )
        image = refs[image]
    return images(decode_base64_image(image), "image")


def benchmark_row(
    row: Mapping[str, Any], *, refs: Mapping[str, str], image_root: str | None,
    read_bytes: ReadBytes, check_image: CheckImage | None = None,
    max_bytes: int = ImageLoader.max_bytes,
) -> dict[str, Any]:
    """One raw benchmark row -> a `BENCHMARK_SCHEMA` row, or RecordError(reason). `image_path`s
    resolve against `image_root`; `check_image` checks the image's bytes (None: not checked);
    image files over `max_bytes` are not read."""
    images = ImageLoader(root=image_root, read_bytes=read_bytes, check=check_image,
                         max_bytes=max_bytes)
    rid = benchmark_id(row)
    if rid is None:
        raise RecordError("missing_id", "no 'index' or 'id'")
    options = benchmark_options(row)
    extras = {  # every other column; single capital letters are option columns
        k: (cell_text(v) if isinstance(v, float) else v) for k, v in row.items()
        if k not in CORE_COLUMNS and not (len(k) == 1 and k.isupper()) and not is_missing(v)
    }
    question = row.get("question")
    out = make_benchmark_row(
        id=rid,
        image=benchmark_image(row, refs, images),
        question=None if is_missing(question) else str(question),
        options=options,
        answers=benchmark_answers(row),
        category="" if is_missing(row.get("category")) else cell_text(row["category"]),
        extras=extras,
    )
    for key, value in out.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # JSON's "\\ud800" escape parses to a lone surrogate
                raise RecordError("bad_encoding", f"{key} has a lone surrogate") from None
    return out


def image_reference(row: Mapping[str, Any]) -> str | None:
    """The index a row's `image` refers to (a short string), else None."""
    image = row.get("image")
    if isinstance(image, str) and 0 < len(image.strip()) <= IMAGE_REF_MAX_CHARS:
        return image.strip()
    return None
