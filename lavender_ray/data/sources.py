"""Ray Data readers: every configured source -> one Dataset of records (`schema.RECORD_SCHEMA`).

Reading streams: JSONL is read line by line (`read_text`), Parquet by row groups, JSON arrays
one file per task; the paper's data sets through their own raw readers
(`lavender_ray.data.readers.RAW_READERS`). Each raw row goes through the pure converter of its
format (`lavender_ray.data.formats.FORMATS`); rows that fail are written to the rejects folder
with their id and reason, never dropped silently. Paths are local or any pyarrow filesystem URI.

Mixture sampling. A source keeps each record with probability `fraction`, decided before its
image is read by `keep_record(id)`: a hash of (data.seed, source name, record id) compared with
the fraction. The sample is deterministic for a seed, independent of read order and
parallelism, and the same in every pipeline mode (stream, cache and precomputed all read
through `read_sources`). With `data.total_samples`, source i's quota is
`total * weight_i / sum(weights)` and its fraction, unless set, is `quota / raw rows` (the raw
rows are counted once: Parquet from its metadata, other layouts by one pass without images), so
each source contributes its quota within binomial sampling error, less its rejects.
`max_samples` then caps a source (the first records read; which ones depends on read order).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from lavender_ray.config import DataConfig, LavenderConfig, SourceConfig
from lavender_ray.data.formats import FORMATS, RowFormat, row_id, unwrap_text_row
from lavender_ray.data.readers import RAW_READERS, READER_REJECT
from lavender_ray.data.rejects import write_rejects
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.schema import RECORD_SCHEMA, RecordError, Reject
from lavender_ray.storage import read_file

READ_STAGE = "read"


# ------------------------------------------------------------------------------------ sampling
def keep_record(record_id: str, fraction: float, seed: int, source: str) -> bool:
    """Whether the mixture keeps this record: sha256(seed, source, id) < fraction * 2**64."""
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}\0{source}\0{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2.0**64


def source_quotas(data: DataConfig) -> dict[str, float]:
    """Records each source should contribute: `total * weight / sum(weights)` ({} without a
    total)."""
    if data.total_samples is None:
        return {}
    total_weight = sum(s.weight for s in data.sources)
    return {s.name: data.total_samples * s.weight / total_weight for s in data.sources}


def source_fraction(source: SourceConfig, quota: float | None, raw_rows: int | None) -> float:
    """The keep probability of one source: its `fraction`, else quota / raw rows (capped at 1),
    else 1."""
    if source.fraction is not None:
        return source.fraction
    if quota is None:
        return 1.0
    if not raw_rows:
        raise ValueError(f"source {source.name!r}: {source.path!r} holds no rows to sample from")
    return min(1.0, quota / raw_rows)


def sampling_fractions(data: DataConfig) -> dict[str, float]:
    """{source name: keep probability}; counts the raw rows of sources that need it."""
    quotas = source_quotas(data)
    fractions = {}
    for source in data.sources:
        quota = quotas.get(source.name)
        needs_count = source.fraction is None and quota is not None
        raw_rows = read_raw(source, data, seed=data.seed).count() if needs_count else None
        fractions[source.name] = source_fraction(source, quota, raw_rows)
    return fractions


# ---------------------------------------------------------------------------------- converting
def convert_rows(
    rows: list[dict[str, Any]], source: SourceConfig, data: DataConfig, fraction: float = 1.0
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Raw rows of one source -> (records, rejects) of the rows the sample keeps.

    JSONL lines arrive as `{"text": line}`; a reader's `READER_REJECT` becomes a reject."""
    fmt = FORMATS[source.format]
    records, rejects = [], []
    for raw in rows:
        try:
            row, error = unwrap_text_row(raw), None
        except RecordError as err:  # a JSONL line that is not an object: id from its text
            row, error = raw, err
        rid = fmt.row_id(row, source.name) if error is None else row_id(
            {}, source.name, str(raw.get("text")))
        if not keep_record(rid, fraction, data.seed, source.name):
            continue
        try:
            if error is not None:
                raise error
            records.append(_convert(row, fmt, source, data))
        except RecordError as err:
            rejects.append(Reject(rid, source.name, READ_STAGE, err.reason, err.detail))
    return records, rejects


def _convert(
    row: dict[str, Any], fmt: RowFormat, source: SourceConfig, data: DataConfig
) -> dict[str, Any]:
    """One kept raw row -> record; a reader's `READER_REJECT` or the converter's RecordError."""
    if row.get(READER_REJECT):
        reason, _, detail = row[READER_REJECT].partition(": ")
        raise RecordError(reason, detail)
    return fmt.convert(row, source=source.name, image_root=source.image_root,
                       read_bytes=read_file, max_text_chars=data.max_text_chars)


def to_records(
    batch: pa.Table, source: dict[str, Any], data: dict[str, Any], rejects_dir: str | None,
    fraction: float = 1.0,
) -> pa.Table:
    """`map_batches` function (pyarrow batches): raw rows of one source -> record rows.

    Takes plain dicts (workers rebuild the config sections themselves)."""
    records, rejects = convert_rows(
        batch.to_pylist(), SourceConfig.model_validate(source), DataConfig.model_validate(data),
        fraction,
    )
    write_rejects(rejects, rejects_dir, READ_STAGE)
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


# ------------------------------------------------------------------------------------- reading
def _split_json_array(row: dict[str, Any]) -> list[dict[str, str]]:
    """One JSON file (`read_binary_files` row) -> one `{"text": entry}` row per array entry."""
    try:
        payload = json.loads(row["bytes"])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [{"text": f"<unreadable JSON file {row['path']}: {err}>"}]
    entries = payload if isinstance(payload, list) else [payload]
    return [{"text": json.dumps(e)} for e in entries]


def read_raw(source: SourceConfig, data: DataConfig, seed: int):
    """The raw rows of one source as a Ray Dataset (before conversion)."""
    import ray

    if source.format == "synthetic":
        return ray.data.from_items(make_synthetic_records(source.num_samples, seed=seed))
    if source.format in RAW_READERS:
        return RAW_READERS[source.format](source)
    path = source.path
    assert path is not None  # guaranteed by SourceConfig validation
    if path.endswith(".parquet") or source.format == "records":
        return ray.data.read_parquet(path)
    if path.endswith(".jsonl"):
        return ray.data.read_text(path)
    if path.endswith(".json"):
        return ray.data.read_binary_files(path, include_paths=True).flat_map(_split_json_array)
    raise ValueError(
        f"source {source.name!r}: cannot tell the file type of path {path!r}; "
        "allowed: .parquet, .jsonl, .json (or a folder of Parquet files with format 'records')"
    )


def read_source(
    source: SourceConfig, data: DataConfig, rejects_dir: str | None,
    fraction: float | None = None,
):
    """One source -> Dataset of records; bad rows go to `rejects_dir` (None: not written).
    `fraction` defaults to the source's own (`sampling_fractions` resolves it against
    `data.total_samples`)."""
    ds = read_raw(source, data, seed=data.seed)
    ds = ds.map_batches(
        to_records,
        fn_kwargs={
            "source": source.model_dump(mode="json"),
            "data": data.model_dump(mode="json"),
            "rejects_dir": rejects_dir,
            "fraction": (source.fraction or 1.0) if fraction is None else fraction,
        },
        batch_format="pyarrow",
        num_cpus=data.read_num_cpus,
    )
    if source.max_samples is not None:
        ds = ds.limit(source.max_samples)
    return ds


def read_sources(
    cfg: LavenderConfig, rejects_dir: str | None, fractions: dict[str, float] | None = None
):
    """All of `cfg.data.sources`, sampled -> one Dataset of records. `fractions` (source name
    -> keep probability) defaults to `sampling_fractions(cfg.data)`."""
    fractions = sampling_fractions(cfg.data) if fractions is None else fractions
    datasets = [read_source(s, cfg.data, rejects_dir, fractions[s.name]) for s in cfg.data.sources]
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
