"""The trainer's dataset: sources -> (SD target stage | cache | precomputed targets) -> records
with targets, ready for `iter_torch_batches` in each train worker.

`pipeline.mode`:

- ``stream`` (default): records stream through the SD actor pool straight into training;
  nothing is written to disk except rejects.
- ``cache``: like stream, but targets already in the cache (`pipeline.cache_path`, keyed by
  record id + image hash + SD config hash) are read back instead of recomputed, and new targets
  are written through to it. The sources are read twice: once for the keys (no SD), once to
  stream.
- ``precomputed``: targets come from `pipeline.precomputed_path`: Parquet with the target
  columns (a cache root, a folder of shards or one file) or the authors' layout
  (`<image name>/lpm_attention/<stem>/attention_<word>.jpg`); joined to the records by id.

Records without targets are rejected with their reason (`no_targets`), never dropped silently.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.data.rejects import filesystem_and_path, write_rejects
from lavender_ray.data.sources import read_sources
from lavender_ray.schema import TARGET_FIELDS, Reject

JOIN_STAGE = "targets"
TARGET_NAMES = [name for name, _ in TARGET_FIELDS]


def build_train_dataset(cfg: LavenderConfig, rejects_dir: str):
    """The Dataset of records with SD targets for `cfg.pipeline.mode`."""
    mode = cfg.pipeline.mode
    if mode == "stream":
        from lavender_ray.sd.stage import add_sd_targets

        return add_sd_targets(read_sources(cfg, rejects_dir), cfg, rejects_dir)
    if mode == "cache":
        return cached_dataset(cfg, rejects_dir)
    return precomputed_dataset(cfg, rejects_dir)


# ------------------------------------------------------------------------------------- cache
def _record_keys(cfg: LavenderConfig) -> set[tuple[str, str]]:
    """(id, image_sha256) of every record the sources yield (a read without SD)."""
    from lavender_ray.sd.cache import IMAGE_HASH, key_and_skip_cached

    scratch = tempfile.mkdtemp(prefix="lavender-keys-")
    try:
        keyed = read_sources(cfg, scratch).map_batches(
            key_and_skip_cached, fn_kwargs={"cached": frozenset()}, batch_format="pyarrow"
        )
        rows = keyed.select_columns(["id", IMAGE_HASH]).take_all()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {(r["id"], r[IMAGE_HASH]) for r in rows}


def _keep_keys(batch: pa.Table, keys: frozenset[tuple[str, str]]) -> pa.Table:
    from lavender_ray.sd.cache import IMAGE_HASH

    pairs = zip(batch["id"].to_pylist(), batch[IMAGE_HASH].to_pylist())
    return batch.filter(pa.array([p in keys for p in pairs], type=pa.bool_()))


class WriteThrough:
    """`map_batches` function: append each batch as a Parquet shard to the cache, pass it on."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows:
            fs, root = filesystem_and_path(self.out_dir)
            fs.create_dir(root, recursive=True)
            pq.write_table(batch, f"{root}/{uuid.uuid4().hex}.parquet", filesystem=fs)
        return batch


def cached_dataset(cfg: LavenderConfig, rejects_dir: str):
    """Cached targets of this run's records + SD over the rest, written through to the cache."""
    import ray

    from lavender_ray.sd.cache import absolute, cached_keys, key_and_skip_cached, targets_dir
    from lavender_ray.sd.components import sd_config_hash
    from lavender_ray.sd.stage import add_sd_targets, stage_device

    if not cfg.pipeline.cache_path:
        raise ConfigError("pipeline.mode=cache needs pipeline.cache_path (local path or URI)")
    root = absolute(cfg.pipeline.cache_path)
    out_dir = targets_dir(root, sd_config_hash(cfg.sd, stage_device(cfg)))
    cached = cached_keys(root, out_dir.rsplit("/", 1)[-1])
    hits = frozenset(_record_keys(cfg) & cached) if cached else frozenset()
    fresh = read_sources(cfg, rejects_dir).map_batches(
        key_and_skip_cached, fn_kwargs={"cached": hits}, batch_format="pyarrow"
    )
    fresh = add_sd_targets(fresh, cfg, rejects_dir).map_batches(
        WriteThrough, fn_constructor_kwargs={"out_dir": out_dir}, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1,
    )
    if not hits:
        return fresh
    reused = ray.data.read_parquet(out_dir).map_batches(
        _keep_keys, fn_kwargs={"keys": hits}, batch_format="pyarrow"
    )
    return reused.union(fresh)


# -------------------------------------------------------------------------------- precomputed
def read_precomputed_targets(cfg: LavenderConfig) -> pa.Table:
    """`id` + target columns from `pipeline.precomputed_path` (Parquet or the authors' layout)."""
    path = cfg.pipeline.precomputed_path
    if not path:
        raise ConfigError("pipeline.mode=precomputed needs pipeline.precomputed_path")
    if cfg.pipeline.precomputed_format == "authors":
        from lavender_ray.sd.authors import read_targets_table

        table = read_targets_table(path)
    else:
        from lavender_ray.sd.cache import read_target_rows

        table = read_target_rows(path)
    if table is None or table.num_rows == 0:
        raise ConfigError(f"pipeline.precomputed_path={path!r} holds no targets")
    missing = [c for c in ["id"] + TARGET_NAMES if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"pipeline.precomputed_path={path!r}: target table lacks columns {missing}"
        )
    return table.select(["id"] + TARGET_NAMES)


class AttachTargets:
    """`map_batches` callable: append the precomputed targets of each record (by id); records
    with none are rejected (`no_targets`)."""

    def __init__(self, targets_ref: Any, rejects_dir: str) -> None:
        import ray

        table: pa.Table = ray.get(targets_ref)
        self.rows = {row_id: i for i, row_id in enumerate(table["id"].to_pylist())}
        self.table = table
        self.rejects_dir = rejects_dir

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch["id"].to_pylist()
        keep = [i for i, rid in enumerate(ids) if rid in self.rows]
        rejects = [
            Reject(rid, src, JOIN_STAGE, "no_targets", "no precomputed targets for this id")
            for rid, src in zip(ids, batch["source"].to_pylist()) if rid not in self.rows
        ]
        write_rejects(rejects, self.rejects_dir, JOIN_STAGE)
        records = batch.take(pa.array(keep, type=pa.int64()))
        records = records.drop_columns([c for c in TARGET_NAMES if c in records.column_names])
        found = self.table.take(pa.array([self.rows[ids[i]] for i in keep], type=pa.int64()))
        for name in TARGET_NAMES:
            records = records.append_column(name, found[name])
        return records


def precomputed_dataset(cfg: LavenderConfig, rejects_dir: str):
    import ray

    targets = ray.put(read_precomputed_targets(cfg))
    return read_sources(cfg, rejects_dir).map_batches(
        AttachTargets,
        fn_constructor_kwargs={"targets_ref": targets, "rejects_dir": rejects_dir},
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.1,
    )
