"""Precomputed SD targets joined to the records (`pipeline.mode=precomputed`).

Targets come from `pipeline.precomputed_path`: Parquet with the target columns (a cache root, a
folder of shards or one file), joined to the records by id (`AttachTargets`, one small actor
holding the table), or the authors' layout (`pipeline.precomputed_format=authors`:
`<image name>/lpm_attention/<stem>/attention_<word>.jpg`, image name = record id + `.jpg` unless
the id ends with an image suffix; a local or shared folder). A record without targets is
rejected (`no_targets`).
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import ray

from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.pipeline.cache import read_target_rows
from lavender_ray.pipeline.read import read_sources
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import TARGET_FIELDS, Reject
from lavender_ray.sd.authors import image_name_for, read_word_maps, target_from_word_maps
from lavender_ray.storage import is_uri

JOIN_STAGE = "targets"
TARGET_NAMES = [name for name, _ in TARGET_FIELDS]


def read_precomputed_targets(cfg: LavenderConfig) -> pa.Table:
    """`id` + target columns from `pipeline.precomputed_path` (Parquet: a cache root, a folder
    of shards or one file)."""
    path = cfg.pipeline.precomputed_path
    table = read_target_rows(path) if path else None
    if table is None or table.num_rows == 0:
        raise ConfigError(f"pipeline.precomputed_path={path!r} holds no target Parquet")
    missing = [c for c in ["id"] + TARGET_NAMES if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"pipeline.precomputed_path={path!r}: target table lacks columns {missing}"
        )
    return table.select(["id"] + TARGET_NAMES)


def _attach(batch: pa.Table, found: list[dict[str, Any] | None], rejects_dir: str) -> pa.Table:
    """Keep the rows whose target was found (target columns appended), reject the others."""
    ids, sources = batch["id"].to_pylist(), batch["source"].to_pylist()
    rejects = [
        Reject(rid, src, JOIN_STAGE, "no_targets", "no precomputed targets for this id")
        for rid, src, target in zip(ids, sources, found) if target is None
    ]
    write_rejects(rejects, rejects_dir, JOIN_STAGE)
    keep = [i for i, target in enumerate(found) if target is not None]
    records = batch.take(pa.array(keep, type=pa.int64()))
    records = records.drop_columns([c for c in TARGET_NAMES if c in records.column_names])
    for name, kind in TARGET_FIELDS:
        records = records.append_column(name, pa.array([found[i][name] for i in keep], type=kind))
    return records


def attach_authors_targets(batch: pa.Table, root: str, rejects_dir: str) -> pa.Table:
    """`map_batches` function: targets read from the authors' layout under `root` for each
    record (`<image_name_for(id)>/lpm_attention/...`), words ordered by the record's text."""
    found: list[dict[str, Any] | None] = []
    for rid, text in zip(batch["id"].to_pylist(), batch["target_text"].to_pylist()):
        maps = read_word_maps(root, image_name_for(rid))
        found.append(target_from_word_maps(maps, text).to_row() if maps else None)
    return _attach(batch, found, rejects_dir)


class AttachTargets:
    """`map_batches` callable: append the precomputed targets of each record (by id); records
    with none are rejected (`no_targets`)."""

    def __init__(self, targets_ref: Any, rejects_dir: str) -> None:
        table: pa.Table = ray.get(targets_ref)
        self.rows = {row_id: i for i, row_id in enumerate(table["id"].to_pylist())}
        self.table = table
        self.rejects_dir = rejects_dir

    def __call__(self, batch: pa.Table) -> pa.Table:
        found = []
        for rid in batch["id"].to_pylist():
            row = self.rows.get(rid)
            found.append(None if row is None else self.table.slice(row, 1).to_pylist()[0])
        return _attach(batch, found, self.rejects_dir)


def precomputed_dataset(cfg: LavenderConfig, rejects_dir: str):
    records = read_sources(cfg, rejects_dir)
    if cfg.pipeline.precomputed_format == "authors":
        root = cfg.pipeline.precomputed_path
        if not root:
            raise ConfigError("pipeline.mode=precomputed needs pipeline.precomputed_path")
        if is_uri(root) or not os.path.isdir(root):
            raise ConfigError(
                f"pipeline.precomputed_path={root!r}: the authors' layout is read as a local or "
                "shared folder, and this is not an existing folder"
            )
        return records.map_batches(
            attach_authors_targets, fn_kwargs={"root": root, "rejects_dir": rejects_dir},
            batch_format="pyarrow", num_cpus=cfg.data.read_num_cpus,
        )
    targets = ray.put(read_precomputed_targets(cfg))
    return records.map_batches(
        AttachTargets,
        fn_constructor_kwargs={"targets_ref": targets, "rejects_dir": rejects_dir},
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.1,
    )
