"""Mixture sampling and row conversion, the pure half of reading a source (no Ray).

Sampling: a source keeps each record with probability `fraction`, decided before its image is
read by `keep_record(id)`: a hash of (data.seed, source name, record id) compared with the
fraction. The sample is deterministic for a seed, independent of read order and parallelism,
and the same in every pipeline mode. With `data.total_samples`, source i's quota is
`total * weight_i / sum(weights)` (`source_quotas`) and its fraction, unless set, is
`quota / raw rows` (`source_fraction`).

Conversion: `convert_rows` turns the raw rows of one source into records through the format's
converter (`formats.FORMATS`) and every row it cannot use into a `Reject` with its reason.
`lavender_ray.pipeline.read` runs both inside Ray Data.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lavender_ray.config import DataConfig, SourceConfig
from lavender_ray.data.formats import FORMATS, RowFormat, row_id, unwrap_text_row
from lavender_ray.data.readers import READER_REJECT
from lavender_ray.schema import RecordError, Reject
from lavender_ray.storage import read_file

READ_STAGE = "read"


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
