"""What the pipeline is about to read, checked before Ray starts (no Ray, no torch).

    check_sources(cfg)   # raises ConfigError, one line naming the source and why

`check_input_paths` (every path and model folder) first; then `check_first_rows` converts the
first `FIRST_ROWS` rows of each source's first file as the readers do (`pipeline.read`: the
same raw rows, `data.mixture.convert_rows`, `images.check_image`). A source whose sampled rows
are all rejected, typically the wrong `format` or image paths that resolve to nothing, would add
nothing while the run trained on the other sources and listed its rows among the rejects at the
end: it is refused at once, with the count per reason and the first reject's detail. A source
with one usable row passes (its other rejects are counted as the run reads them).

Sampled: the row formats of JSON lines, JSON arrays and Parquet (`SAMPLED_FORMATS`). Of a JSON
or JSONL file only the first `PREFIX_BYTES` are read (a JSON array's first entries are decoded
from there); a file whose first rows do not fit in them is not sampled. The Karpathy JSON of
`flickr30k` (read whole) and LAION shards are left to the readers. `lavender data inspect`
checks paths only: it is where a source's rejects are looked at.
"""

from __future__ import annotations

import collections
import functools
import json
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lavender_ray.config import ConfigError, LavenderConfig, SourceConfig
from lavender_ray.data.checks import check_input_paths, file_prefix, source_files
from lavender_ray.data.mixture import READ_STAGE, convert_rows
from lavender_ray.data.readers import (
    BOMS,
    DATA_FILE,
    RAY_PATH,
    json_array_rows,
    jsonl_rows,
    text_row,
)
from lavender_ray.images import check_image
from lavender_ray.rejects import format_counts
from lavender_ray.schema import Reject

FIRST_ROWS = 32
PREFIX_BYTES = 1 << 20
SAMPLED_FORMATS = ("messages", "llava", "records", "rlaif_v", "ocrvqa")


def check_sources(cfg: LavenderConfig, rows: int = FIRST_ROWS) -> None:
    """`check_input_paths`, then `check_first_rows`."""
    check_input_paths(cfg)
    check_first_rows(cfg, rows)


def check_first_rows(cfg: LavenderConfig, rows: int = FIRST_ROWS) -> None:
    """ConfigError when every one of the first `rows` rows of a source is rejected, e.g.
    "data.sources[web]: its first 7 rows (in b.jsonl) are all rejected, so it would add nothing
    to the run: read/bad_messages 7; the first, r0: 'conversations' must be a non-empty list,
    got NoneType None; it has 'messages': format messages? (...)"."""
    check = functools.partial(check_image, max_pixels=cfg.data.max_image_pixels)
    for source in cfg.data.sources:
        if source.format not in SAMPLED_FORMATS:
            continue
        fs, files = source_files(source)
        raw = first_raw_rows(fs, files[0], rows)
        records, rejects = convert_rows(raw, source, cfg.data, check_image=check,
                                        file_prefix=file_prefix(source))
        if rejects and not records:
            raise ConfigError(_all_rejected(source, files[0].rsplit("/", 1)[-1], rejects))


def _all_rejected(source: SourceConfig, file_name: str, rejects: list[Reject]) -> str:
    counts = collections.Counter(f"{READ_STAGE}/{r.reason}" for r in rejects)
    reasons = format_counts(counts)
    if counts.most_common(1)[0][0] == f"{READ_STAGE}/missing_image":
        root = f"data.sources[{source.name}].image_root"
        reasons += (f" (relative image paths resolve against {root})" if source.image_root
                    else f" (relative image paths resolve against the data file's folder, or "
                    f"{root} when set)")
    first = rejects[0]
    return (f"data.sources[{source.name}]: its first {len(rejects)} rows (in {file_name}) are "
            f"all rejected, so it would add nothing to the run: {reasons}; the first, "
            f"{first.id}: {first.detail[:300]} (`lavender data inspect` with the same preset "
            "lists every reject)")


def first_raw_rows(fs: pafs.FileSystem, path: str, rows: int) -> list[dict[str, Any]]:
    """The first `rows` raw rows of one data file, as `pipeline.read` gives them to the
    converter; [] when they cannot be had cheaply (module docstring)."""
    if path.endswith(".parquet"):
        return _parquet_rows(fs, path, rows)
    with fs.open_input_stream(path) as f:
        data = f.read(PREFIX_BYTES + 1)
    whole = len(data) <= PREFIX_BYTES
    if path.endswith(".jsonl"):
        if not whole:
            if any(data.startswith(bom) for bom, enc in BOMS if enc != "utf-8-sig"):
                return []  # UTF-16/32 decode as a whole: a cut would split a character
            data = data[: data.rfind(b"\n") + 1]
        return jsonl_rows({"bytes": data, "path": path})[:rows]
    if whole:
        return json_array_rows({"bytes": data, "path": path})[:rows]
    return _json_array_head(data, path, rows)


def _parquet_rows(fs: pafs.FileSystem, path: str, rows: int) -> list[dict[str, Any]]:
    with fs.open_input_file(path) as f:
        batch = next(pq.ParquetFile(f).iter_batches(batch_size=rows), None)
        if batch is None:
            return []
        if RAY_PATH in batch.schema.names:  # Ray's reader puts the file's path there
            batch = batch.drop_columns([RAY_PATH])
        try:
            return [{**row, DATA_FILE: path} for row in batch.to_pylist()]
        except UnicodeDecodeError:  # the readers reject such rows one by one
            return []


def _json_array_head(data: bytes, path: str, rows: int) -> list[dict[str, Any]]:
    """The first entries of a JSON array from the start of its file (UTF-8), as
    `readers.json_array_rows` gives them; [] when the start is not an array of whole entries."""
    text = data.decode("utf-8-sig", errors="ignore")  # a cut character at the end is dropped
    decoder, name = json.JSONDecoder(strict=False), path.rsplit("/", 1)[-1]
    at = len(text) - len(text.lstrip())
    if not text.startswith("[", at):
        return []
    out, at = [], at + 1
    while len(out) < rows:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            entry, at = decoder.raw_decode(text, at)
        except ValueError:
            break  # the prefix ends inside an entry, or the array ended
        out.append(text_row(json.dumps(entry), path, f"{name}[{len(out)}]"))
    return out
