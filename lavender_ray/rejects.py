"""The rejects output: every record a stage cannot use lands here with its reason, counted.

Stages write small Parquet files (`REJECT_SCHEMA`) into one folder, local or any pyarrow
filesystem URI, so a streaming stage can reject rows without a second output of the dataset:
in each pass over the data, records in = records out + records rejected. A record read again (a
training run's second epoch, a stream restarted after a worker failure) is rejected again, so
the readers here count it once: rows equal in all their fields are one rejected record.
`summarise_rejects` is what a console shows of them: per stage and reason the count and the
first few ids with their detail.
"""

from __future__ import annotations

import collections
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lavender_ray.schema import REJECT_SCHEMA, Reject, printable
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
    rows = [{k: printable(v) for k, v in r.to_row().items()} for r in rejects]
    table = pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)
    pq.write_table(table, path, filesystem=fs)
    return path


def read_rejects(rejects_dir: str) -> pa.Table:
    """Every rejected record under `rejects_dir` once (an empty table if there are none): rows
    written again for the same record (a later epoch, a restarted stream: equal id, source,
    stage, reason and detail) are left out."""
    fs, root = filesystem_and_path(rejects_dir)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return REJECT_SCHEMA.empty_table()
    selector = pafs.FileSelector(root, recursive=True)
    files = sorted(f.path for f in fs.get_file_info(selector) if f.path.endswith(".parquet"))
    tables = [pq.read_table(p, filesystem=fs, schema=REJECT_SCHEMA) for p in files]
    if not tables:
        return REJECT_SCHEMA.empty_table()
    rows = pa.concat_tables(tables).to_pylist()
    distinct = {tuple(row.values()): row for row in rows}  # keeps the first one's place
    return pa.Table.from_pylist(list(distinct.values()), schema=REJECT_SCHEMA)


def count_rejects(rejects_dir: str) -> dict[str, int]:
    """`{"<stage>/<reason>": count}` over everything under `rejects_dir`."""
    rows = read_rejects(rejects_dir).select(["stage", "reason"]).to_pylist()
    return dict(collections.Counter(f"{r['stage']}/{r['reason']}" for r in rows))


def format_counts(counts: dict[str, int]) -> str:
    """`count_rejects`' output on one line: "read/missing_image 2, vlm/answer_truncated 1", or
    "none"."""
    return ", ".join(f"{key} {n}" for key, n in sorted(counts.items())) or "none"


def summarise_rejects(rejects_dir: str, first: int = 3, width: int = 120) -> str:
    """Rejects under `rejects_dir` for a console: "rejects: <n>  [<rejects_dir>]", then one
    line per "<stage>/<reason>" with its count (most frequent first), then the first `first` of
    them as `<source>/<id>: <detail>`, the detail cut to `width` characters; "rejects: none"
    when there are none."""
    rows = read_rejects(rejects_dir).to_pylist()
    if not rows:
        return f"rejects: none  [{rejects_dir}]"
    groups: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for row in rows:
        groups[f"{row['stage']}/{row['reason']}"].append(row)
    lines = [f"rejects: {len(rows)}  [{rejects_dir}]"]
    for key, group in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"  {key}  {len(group)}")
        for row in group[:first]:
            detail = " ".join(row["detail"].split())
            if len(detail) > width:
                detail = detail[: width - 3] + "..."
            lines.append(f"    {row['source']}/{' '.join(row['id'].split())[:width]}: {detail}")
    return "\n".join(lines)
