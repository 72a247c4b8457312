"""The rejects output: every record a stage cannot use lands here with its reason, counted.

Stages write small Parquet files (`REJECT_SCHEMA`) into one folder, local or any pyarrow
filesystem URI, so a streaming stage can reject rows without a second output of the dataset:
records in = records out + rows under the rejects folder.
"""

from __future__ import annotations

import collections
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lavender_ray.schema import REJECT_SCHEMA, Reject
from lavender_ray.storage import filesystem_and_path


def write_rejects(rejects: list[Reject], rejects_dir: str | None, stage: str) -> str | None:
    """Write `rejects` as one Parquet file under `rejects_dir`; returns its path (None if empty).
    `rejects_dir=None`: nothing is written, for a read whose rejects another read of the same
    sources records (the cache's key scan)."""
    if not rejects or rejects_dir is None:
        return None
    fs, root = filesystem_and_path(rejects_dir)
    fs.create_dir(root, recursive=True)
    path = f"{root.rstrip('/')}/{stage}-{uuid.uuid4().hex}.parquet"
    table = pa.Table.from_pylist([r.to_row() for r in rejects], schema=REJECT_SCHEMA)
    pq.write_table(table, path, filesystem=fs)
    return path


def read_rejects(rejects_dir: str) -> pa.Table:
    """All rejects under `rejects_dir` (an empty table if there are none)."""
    fs, root = filesystem_and_path(rejects_dir)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return REJECT_SCHEMA.empty_table()
    selector = pafs.FileSelector(root, recursive=True)
    files = sorted(f.path for f in fs.get_file_info(selector) if f.path.endswith(".parquet"))
    tables = [pq.read_table(p, filesystem=fs, schema=REJECT_SCHEMA) for p in files]
    return pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()


def count_rejects(rejects_dir: str) -> dict[str, int]:
    """`{"<stage>/<reason>": count}` over everything under `rejects_dir`."""
    rows = read_rejects(rejects_dir).select(["stage", "reason"]).to_pylist()
    return dict(collections.Counter(f"{r['stage']}/{r['reason']}" for r in rows))
