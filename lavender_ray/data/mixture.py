"""Mixture sampling and row conversion, the pure half of reading a source (no Ray).

Sampling: a source keeps each record with probability `fraction`, decided before its image is
read by `keep_record(id)`: a hash of (data.seed, source name, record id) compared with the
fraction. The sample is deterministic for a seed, independent of read order and parallelism,
and the same in every pipeline mode. With `data.total_samples`, source i's quota is
`total * weight_i / sum(weights)` (`source_quotas`) and its fraction, unless set, is
`quota / raw rows` (`source_fraction`).

Conversion: `convert_rows` turns the raw rows of one source into records through the format's
converter (`formats.FORMATS`) and every row it cannot use into a `Reject` with its reason. Each
row's image references resolve against the source's `image_root`, else against the folder of
the data file the row came from (`readers.DATA_FILE`). A row that fails in a way no converter
foresaw is rejected as `convert_error` with the exception, never a failed read (the adversarial
tests keep that reason unused). `lavender_ray.pipeline.read` runs both inside Ray Data.

Duplicate ids within a source are kept: a repeated id is a repeated sample (content-hash ids
repeat exactly when a row does), and finding them needs a global pass over a streamed read. The
cache keys targets by id and image hash, so duplicates share a target only when their images are
equal; a precomputed-targets join gives every duplicate the same target.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lavender_ray.config import DataConfig, SourceConfig
from lavender_ray.data.formats import FORMATS, RowFormat, unwrap_text_row
from lavender_ray.data.image_refs import CheckImage, ImageLoader, folder_of, max_image_bytes
from lavender_ray.data.readers import DATA_FILE, READER_REJECT, ROW_AT
from lavender_ray.schema import RecordError, Reject, printable
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
    rows: list[dict[str, Any]], source: SourceConfig, data: DataConfig, fraction: float = 1.0,
    check_image: CheckImage | None = None, file_prefix: str = "",
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Raw rows of one source -> (records, rejects) of the rows the sample keeps.

    Text rows (JSONL lines, JSON array entries) arrive as `{"text": ...}` with their file and
    place (`readers.text_row`); a reader's `READER_REJECT` becomes a reject. `check_image`
    checks each image's bytes (`images.check_image`); `file_prefix` turns a row's data file (a
    path inside its filesystem) back into the path or URI its images are read next to."""
    fmt = FORMATS[source.format]
    records, rejects = [], []
    for raw in rows:
        raw = dict(raw)
        data_file, at = raw.pop(DATA_FILE, None), raw.pop(ROW_AT, None)
        reader_reject = raw.pop(READER_REJECT, None)
        error = RecordError(*reader_reject.partition(": ")[::2]) if reader_reject else None
        row = raw
        if error is None:
            try:
                row = unwrap_text_row(raw)
            except RecordError as err:
                error = err
        rid = at if error is not None and at else _row_id(fmt, row, source.name)
        if not keep_record(rid, fraction, data.seed, source.name):
            continue
        try:
            if error is not None:
                raise error
            loader = ImageLoader(root=_image_root(source, data_file, file_prefix),
                                 read_bytes=read_file, check=check_image,
                                 max_bytes=max_image_bytes(data.max_image_pixels))
            records.append(fmt.convert(row, source=source.name, images=loader,
                                       max_text_chars=data.max_text_chars))
        except RecordError as err:
            rejects.append(Reject(rid, source.name, READ_STAGE, err.reason, printable(err.detail)))
        except Exception as err:  # the promise: a row is rejected, never the read (docstring)
            detail = printable(f"{type(err).__name__}: {err}"[:300])
            rejects.append(Reject(rid, source.name, READ_STAGE, "convert_error", detail))
    return records, rejects


def _row_id(fmt: RowFormat, row: dict[str, Any], source: str) -> str:
    try:
        return fmt.row_id(row, source)
    except Exception:  # row ids never raise by contract; a hash if one does
        digest = hashlib.sha1(repr(row).encode("utf-8", "backslashreplace")).hexdigest()
        return f"{source}-{digest[:12]}"


def _image_root(source: SourceConfig, data_file: str | None, file_prefix: str) -> str | None:
    """Where the row's relative image references resolve: `image_root`, else the data file's
    folder."""
    if source.image_root or not data_file:
        return source.image_root
    return folder_of(f"{file_prefix}{data_file}")
