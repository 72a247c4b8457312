"""Ray Data readers: every configured source -> one Dataset of records (`schema.RECORD_SCHEMA`).

Reading streams: JSONL is read line by line (`read_text`), Parquet by row groups, JSON arrays
one file per task. Each raw row goes through the pure converter of its format
(`lavender_ray.data.formats`); rows that fail are written to the rejects folder with their id
and reason, never dropped silently. Paths are local or any pyarrow filesystem URI.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from lavender_ray.config import DataConfig, LavenderConfig, SourceConfig
from lavender_ray.data.formats import CONVERTERS, parse_json_text, read_bytes_pyarrow, row_id
from lavender_ray.data.rejects import write_rejects
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.schema import RECORD_SCHEMA, RecordError, Reject

READ_STAGE = "read"


def convert_rows(
    rows: list[dict[str, Any]], source: SourceConfig, data: DataConfig
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Raw rows of one source -> (records, rejects). Rows with only a `text` column are JSON."""
    convert = CONVERTERS[source.format]
    records, rejects = [], []
    for raw in rows:
        text = raw.get("text") if set(raw) == {"text"} else None
        try:
            row = parse_json_text(text) if text is not None else raw
            records.append(
                convert(row, source=source.name, image_root=source.image_root,
                        read_bytes=read_bytes_pyarrow, max_text_chars=data.max_text_chars)
            )
        except RecordError as err:
            rid = row_id(raw if text is None else {}, source.name, text or json.dumps(raw, default=str))
            if text is not None:
                try:
                    rid = row_id(json.loads(text), source.name, text)
                except (json.JSONDecodeError, TypeError, AttributeError):
                    pass
            rejects.append(Reject(rid, source.name, READ_STAGE, err.reason, err.detail))
    return records, rejects


def to_records(
    batch: pa.Table, source: dict[str, Any], data: dict[str, Any], rejects_dir: str
) -> pa.Table:
    """`map_batches` function (pyarrow batches): raw rows of one source -> record rows.

    Takes plain dicts (workers rebuild the config sections themselves)."""
    records, rejects = convert_rows(
        batch.to_pylist(), SourceConfig.model_validate(source), DataConfig.model_validate(data)
    )
    write_rejects(rejects, rejects_dir, READ_STAGE)
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


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


def read_source(source: SourceConfig, data: DataConfig, rejects_dir: str):
    """One source -> Dataset of records; bad rows go to `rejects_dir`."""
    ds = read_raw(source, data, seed=data.seed)
    ds = ds.map_batches(
        to_records,
        fn_kwargs={
            "source": source.model_dump(mode="json"),
            "data": data.model_dump(mode="json"),
            "rejects_dir": rejects_dir,
        },
        batch_format="pyarrow",
        num_cpus=data.read_num_cpus,
    )
    if source.max_samples is not None:
        ds = ds.limit(source.max_samples)
    return ds


def read_sources(cfg: LavenderConfig, rejects_dir: str):
    """All of `cfg.data.sources` -> one Dataset of records (concatenated)."""
    datasets = [read_source(s, cfg.data, rejects_dir) for s in cfg.data.sources]
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
