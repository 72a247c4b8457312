"""Benchmark files -> a Ray Dataset of benchmark rows (`schema.BENCHMARK_SCHEMA`).

    ds = read_benchmark(path, name, rejects_dir)

The file's format follows its extension (`.tsv`, `.parquet`, `.jsonl`; local path or any
pyarrow filesystem URI); the row format and the reject reasons are documented in
`lavender_ray.data.benchmarks`, which converts each row.

Streaming: the file is read in blocks (`TSV_BLOCK_BYTES` must exceed the longest row). Image
references need the referenced images: one extra pass collects the indices that are referenced
(small), and only when there are any, a second pass collects those rows' images into the
converter's arguments (for MMBench that is every distinct image once).

No row fails the read: TSV cells are read as bytes and decoded per row (a cell that is not UTF-8
is a `bad_encoding` reject), a TSV line with the wrong number of fields is a `bad_row` reject
(pyarrow's invalid-row handler), JSONL lines are split as the sources' are
(`lavender_ray.data.readers.jsonl_rows`), and every image is checked as training images are.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from pyarrow import csv

from lavender_ray.config import DataConfig
from lavender_ray.data.benchmarks import (
    BENCHMARK_EXTENSIONS,
    BENCHMARK_STAGE,
    benchmark_id,
    benchmark_row,
    image_reference,
)
from lavender_ray.data.formats import unwrap_text_row
from lavender_ray.data.image_refs import folder_of, max_image_bytes
from lavender_ray.data.readers import DATA_FILE, READER_REJECT, ROW_AT, jsonl_rows
from lavender_ray.images import check_image
from lavender_ray.pipeline.read import read_parquet, table_rows
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import BENCHMARK_SCHEMA, RecordError, Reject, printable
from lavender_ray.storage import filesystem_and_path, read_file

TSV_BLOCK_BYTES = 64 << 20  # pyarrow's CSV block; one row (one base64 image) must fit
MAX_IMAGE_PIXELS = DataConfig.model_fields["max_image_pixels"].default
TSV_ROW = "__tsv__"  # marks TSV rows, whose cells are bytes to decode


Parsed = tuple[dict[str, Any], RecordError | None, str | None]


def _parsed(batch: pa.Table) -> list[Parsed]:
    """A raw batch -> (row, None, where), or (raw row, error, where) for a row that cannot be
    read: a JSONL line that is not an object or not UTF-8, a TSV cell that is not UTF-8.
    `where`: the line of a JSONL row ("bench.jsonl:7"), else None."""
    out: list[Parsed] = []
    for raw in table_rows(batch):
        raw.pop(DATA_FILE, None)
        reject, at = raw.pop(READER_REJECT, None), raw.pop(ROW_AT, None)
        try:
            if reject:
                raise RecordError(*reject.partition(": ")[::2])
            row = unwrap_text_row(raw)
        except RecordError as err:
            out.append((raw, err, at))
            continue
        out.append((*_decoded_cells(row), at))
    return out


def _decoded_cells(row: dict[str, Any]) -> tuple[dict[str, Any], RecordError | None]:
    """TSV cells (read as bytes) -> text, and the error of the first cell that is not UTF-8
    (its row still decoded, with replacement characters, so the reject has the row's index);
    other rows unchanged."""
    if not row.pop(TSV_ROW, None):
        return row, None
    decoded, error = {}, None
    for key, value in row.items():
        if not isinstance(value, bytes):
            decoded[key] = value
            continue
        try:
            decoded[key] = value.decode("utf-8")
        except UnicodeDecodeError as err:
            decoded[key] = value.decode("utf-8", "replace")
            error = error or RecordError(
                "bad_encoding", f"column {key!r} is not UTF-8 (byte {err.start}): {value[:40]!r}")
    return decoded, error


def _mark_tsv(batch: pa.Table) -> pa.Table:
    return batch.append_column(TSV_ROW, pa.array([True] * batch.num_rows))


class InvalidTsvRow:
    """pyarrow's `invalid_row_handler`: a TSV line with the wrong number of fields is skipped
    and, with a `rejects_dir`, becomes a `bad_row` reject (written here, in the read task; the
    reference passes read without one, so each line is rejected once)."""

    def __init__(self, path: str, name: str, rejects_dir: str | None) -> None:
        self.path, self.name, self.rejects_dir = path, name, rejects_dir

    def __call__(self, row: Any) -> str:
        if self.rejects_dir is None:
            return "skip"
        where = self.path.rsplit("/", 1)[-1]
        rid = f"{where}:{row.number}" if row.number is not None else f"{where}:" + hashlib.sha1(
            row.text.encode("utf-8", "backslashreplace")).hexdigest()[:12]
        detail = (f"{self.path} line {row.number}: {row.actual_columns} fields, the header has "
                  f"{row.expected_columns}: {row.text[:60]!r}")
        write_rejects([Reject(rid, self.name, BENCHMARK_STAGE, "bad_row", detail)],
                      self.rejects_dir, BENCHMARK_STAGE)
        return "skip"


def _references(batch: pa.Table) -> pa.Table:
    """`map_batches`: the indices this batch's rows refer to for their image."""
    refs = [image_reference(row) for row, err, _ in _parsed(batch) if err is None]
    return pa.table({"ref": pa.array([r for r in refs if r is not None], type=pa.string())})


def _referenced_images(batch: pa.Table, wanted: frozenset[str]) -> pa.Table:
    """`map_batches`: (index, base64 image) of the rows in `wanted`."""
    pairs = [
        (benchmark_id(row), row["image"]) for row, err, _ in _parsed(batch)
        if err is None and benchmark_id(row) in wanted and isinstance(row.get("image"), str)
    ]
    return pa.table({"index": pa.array([p[0] for p in pairs], type=pa.string()),
                     "image": pa.array([p[1] for p in pairs], type=pa.string())})


def to_benchmark_rows(
    batch: pa.Table, name: str, rejects_dir: str, image_root: str | None, refs: dict[str, str],
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> pa.Table:
    """`map_batches` function: raw rows -> benchmark rows; failures go to `rejects_dir`."""
    check = functools.partial(check_image, max_pixels=max_image_pixels)
    out, rejects = [], []
    for row, parse_error, at in _parsed(batch):
        try:
            if parse_error is not None:
                raise parse_error
            out.append(benchmark_row(row, refs=refs, image_root=image_root, read_bytes=read_file,
                                     check_image=check,
                                     max_bytes=max_image_bytes(max_image_pixels)))
        except RecordError as err:
            rejects.append(Reject(_reject_id(row, at, name), name, BENCHMARK_STAGE,
                                  err.reason, printable(err.detail)))
        except Exception as err:  # a row is rejected, never the read
            detail = printable(f"{type(err).__name__}: {err}"[:300])
            rejects.append(Reject(_reject_id(row, at, name), name, BENCHMARK_STAGE,
                                  "convert_error", detail))
    write_rejects(rejects, rejects_dir, BENCHMARK_STAGE)
    return pa.Table.from_pylist(out, schema=BENCHMARK_SCHEMA)


def _reject_id(row: dict[str, Any], at: str | None, name: str) -> str:
    """The row's index, else where it is in the file (a line that is no row), else a hash."""
    rid = benchmark_id(row) or at
    if rid is None:
        rid = f"{name}-" + hashlib.sha1(
            repr(row).encode("utf-8", "backslashreplace")).hexdigest()[:12]
    return printable(rid)


def tsv_header(path: str) -> list[str]:
    """The column names on a TSV's first line (reads only the start of the file)."""
    fs, inner = filesystem_and_path(path)
    head = b""
    with fs.open_input_stream(inner) as stream:
        while b"\n" not in head:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            head += chunk
    return head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r").split("\t")


def read_benchmark_raw(path: str, name: str = "", rejects_dir: str | None = None,
                       num_cpus: float = 0.25):
    """The raw rows of a benchmark file (TSV cells as bytes, marked `TSV_ROW`; JSONL as text
    rows). TSV lines that cannot be parsed go to `rejects_dir` as `name`'s (None: skipped).
    Every read and map task asks for `num_cpus` (Ray's default is a whole CPU each)."""
    if not path.endswith(BENCHMARK_EXTENSIONS):
        raise ValueError(f"benchmark file {path!r}: unknown extension; allowed: "
                         f"{', '.join(BENCHMARK_EXTENSIONS)}")
    fs, inner = filesystem_and_path(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise FileNotFoundError(f"benchmark file {path!r} does not exist")
    if path.endswith(".parquet"):
        return read_parquet(inner, num_cpus, filesystem=fs)
    if path.endswith(".jsonl"):
        return ray.data.read_binary_files(inner, filesystem=fs, include_paths=True,
                                          num_cpus=num_cpus).flat_map(
            jsonl_rows, num_cpus=num_cpus)
    columns = tsv_header(path)
    handler = InvalidTsvRow(path, name, rejects_dir)
    return ray.data.read_csv(
        inner,
        filesystem=fs,
        num_cpus=num_cpus,
        read_options=csv.ReadOptions(block_size=TSV_BLOCK_BYTES, use_threads=False),
        parse_options=csv.ParseOptions(delimiter="\t", newlines_in_values=True,
                                       invalid_row_handler=handler),
        convert_options=csv.ConvertOptions(
            column_types={c: pa.binary() for c in columns}, strings_can_be_null=True
        ),
    ).map_batches(_mark_tsv, batch_format="pyarrow", num_cpus=num_cpus)


def collect_image_references(raw, num_cpus: float = 0.25) -> dict[str, str]:
    """{index: base64 image} of every row some other row's `image` refers to ({} if none)."""
    wanted = frozenset(r["ref"] for r in raw.map_batches(_references, batch_format="pyarrow",
                                                                 num_cpus=num_cpus)
                       .take_all())
    if not wanted:
        return {}
    found = raw.map_batches(_referenced_images, fn_kwargs={"wanted": wanted},
                            batch_format="pyarrow", num_cpus=num_cpus).take_all()
    return {r["index"]: r["image"] for r in found}


def read_benchmark(path: str, name: str, rejects_dir: str, *, image_root: str | None = None,
                   num_cpus: float = 0.25, max_image_pixels: int = MAX_IMAGE_PIXELS):
    """A benchmark file -> Ray Dataset of `BENCHMARK_SCHEMA` rows; bad rows to `rejects_dir`.

    `name` labels the rejects (their `source`); relative `image_path`s resolve against
    `image_root`, else the file's folder. Runs the reference passes eagerly (see the module
    docstring); the conversion itself is lazy and streams."""
    refs = collect_image_references(read_benchmark_raw(path, num_cpus=num_cpus), num_cpus)
    return read_benchmark_raw(path, name, rejects_dir, num_cpus).map_batches(
        to_benchmark_rows,
        fn_kwargs={"name": name, "rejects_dir": rejects_dir,
                   "image_root": image_root or folder_of(path),
                   "refs": refs, "max_image_pixels": max_image_pixels},
        batch_format="pyarrow",
        num_cpus=num_cpus,
    )
