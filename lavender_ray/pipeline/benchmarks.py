"""Benchmark files -> a Ray Dataset of benchmark rows (`schema.BENCHMARK_SCHEMA`).

    ds = read_benchmark(path, name, rejects_dir)

The file's format follows its extension (`.tsv`, `.parquet`, `.jsonl`; local path or any
pyarrow filesystem URI); the row format and the reject reasons are documented in
`lavender_ray.data.benchmarks`, which converts each row.

Streaming: the file is read in blocks (`TSV_BLOCK_BYTES` must exceed the longest row). Image
references need the referenced images: one extra pass collects the indices that are referenced
(small), and only when there are any, a second pass collects those rows' images into the
converter's arguments (for MMBench that is every distinct image once).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from pyarrow import csv

from lavender_ray.data.benchmarks import (
    BENCHMARK_EXTENSIONS,
    BENCHMARK_STAGE,
    benchmark_id,
    benchmark_row,
    image_reference,
)
from lavender_ray.data.formats import unwrap_text_row
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import BENCHMARK_SCHEMA, RecordError, Reject
from lavender_ray.storage import filesystem_and_path, read_file

TSV_BLOCK_BYTES = 64 << 20  # pyarrow's CSV block; one row (one base64 image) must fit


def _parsed(batch: pa.Table) -> list[tuple[dict[str, Any], RecordError | None]]:
    """A raw batch -> (row, None), or (raw row, error) for a JSONL line that is not an object."""
    out: list[tuple[dict[str, Any], RecordError | None]] = []
    for raw in batch.to_pylist():
        try:
            out.append((unwrap_text_row(raw), None))
        except RecordError as err:
            out.append((raw, err))
    return out


def _references(batch: pa.Table) -> pa.Table:
    """`map_batches`: the indices this batch's rows refer to for their image."""
    refs = [image_reference(row) for row, err in _parsed(batch) if err is None]
    return pa.table({"ref": pa.array([r for r in refs if r is not None], type=pa.string())})


def _referenced_images(batch: pa.Table, wanted: frozenset[str]) -> pa.Table:
    """`map_batches`: (index, base64 image) of the rows in `wanted`."""
    pairs = [
        (benchmark_id(row), row["image"]) for row, err in _parsed(batch)
        if err is None and benchmark_id(row) in wanted and isinstance(row.get("image"), str)
    ]
    return pa.table({"index": pa.array([p[0] for p in pairs], type=pa.string()),
                     "image": pa.array([p[1] for p in pairs], type=pa.string())})


def to_benchmark_rows(
    batch: pa.Table, name: str, rejects_dir: str, image_root: str | None, refs: dict[str, str]
) -> pa.Table:
    """`map_batches` function: raw rows -> benchmark rows; failures go to `rejects_dir`."""
    out, rejects = [], []
    for row, parse_error in _parsed(batch):
        try:
            if parse_error is not None:
                raise parse_error
            out.append(benchmark_row(row, refs=refs, image_root=image_root,
                                     read_bytes=read_file))
        except RecordError as err:
            rid = (benchmark_id(row) if parse_error is None else None) or (
                f"{name}-{hashlib.sha1(repr(row).encode()).hexdigest()[:12]}")
            rejects.append(Reject(rid, name, BENCHMARK_STAGE, err.reason, err.detail))
    write_rejects(rejects, rejects_dir, BENCHMARK_STAGE)
    return pa.Table.from_pylist(out, schema=BENCHMARK_SCHEMA)


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


def read_benchmark_raw(path: str):
    """The raw rows of a benchmark file (TSV cells as strings, JSONL as `{"text": line}`)."""
    if path.endswith(".parquet"):
        return ray.data.read_parquet(path)
    if path.endswith(".jsonl"):
        return ray.data.read_text(path)
    if path.endswith(".tsv"):
        fs, inner = filesystem_and_path(path)
        if fs.get_file_info(inner).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"benchmark file {path!r} does not exist")
        columns = tsv_header(path)
        return ray.data.read_csv(
            path,
            read_options=csv.ReadOptions(block_size=TSV_BLOCK_BYTES, use_threads=False),
            parse_options=csv.ParseOptions(delimiter="\t", newlines_in_values=True),
            convert_options=csv.ConvertOptions(
                column_types={c: pa.string() for c in columns}, strings_can_be_null=True
            ),
        )
    raise ValueError(
        f"benchmark file {path!r}: unknown extension; allowed: {', '.join(BENCHMARK_EXTENSIONS)}"
    )


def collect_image_references(raw) -> dict[str, str]:
    """{index: base64 image} of every row some other row's `image` refers to ({} if none)."""
    wanted = frozenset(r["ref"] for r in raw.map_batches(_references, batch_format="pyarrow")
                       .take_all())
    if not wanted:
        return {}
    found = raw.map_batches(_referenced_images, fn_kwargs={"wanted": wanted},
                            batch_format="pyarrow").take_all()
    return {r["index"]: r["image"] for r in found}


def read_benchmark(path: str, name: str, rejects_dir: str, *, image_root: str | None = None,
                   num_cpus: float = 0.25):
    """A benchmark file -> Ray Dataset of `BENCHMARK_SCHEMA` rows; bad rows to `rejects_dir`.

    `name` labels the rejects (their `source`). Runs the reference passes eagerly (see the
    module docstring); the conversion itself is lazy and streams."""
    raw = read_benchmark_raw(path)
    refs = collect_image_references(raw)
    return raw.map_batches(
        to_benchmark_rows,
        fn_kwargs={"name": name, "rejects_dir": rejects_dir, "image_root": image_root,
                   "refs": refs},
        batch_format="pyarrow",
        num_cpus=num_cpus,
    )
