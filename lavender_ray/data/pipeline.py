"""The trainer's dataset: sources -> (SD target stage | cache | precomputed targets) -> records
with targets, ready for `iter_torch_batches` in each train worker.

`pipeline.mode`:

- ``stream`` (default): records stream through the SD actor pool straight into training;
  nothing is written to disk except rejects.
- ``cache``: like stream, but targets already in the cache (`pipeline.cache_path`, keyed by
  record id + image hash + SD config hash) are read back instead of recomputed, and new targets
  are written through to it. The sources are read twice: once for the keys (no SD), once to
  stream. When every record is cached, no SD actor pool starts.
- ``precomputed``: targets come from `pipeline.precomputed_path`: Parquet with the target
  columns (a cache root, a folder of shards or one file), joined to the records by id, or the
  authors' layout (`pipeline.precomputed_format=authors`:
  `<image name>/lpm_attention/<stem>/attention_<word>.jpg`, image name = record id + `.jpg`
  unless the id ends with an image suffix; local or shared folder).

Records without targets are rejected with their reason (`no_targets`), never dropped silently.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.data.rejects import write_rejects
from lavender_ray.data.sources import read_sources
from lavender_ray.schema import TARGET_FIELDS, Reject
from lavender_ray.storage import filesystem_and_path, is_uri

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

    # no rejects written: the streaming read of the same sources records them
    keyed = read_sources(cfg, None).map_batches(
        key_and_skip_cached, fn_kwargs={"cached": frozenset()}, batch_format="pyarrow"
    )
    rows = keyed.select_columns(["id", IMAGE_HASH]).take_all()
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
    keys = _record_keys(cfg) if cached else set()
    hits = frozenset(keys & cached)
    fresh = read_sources(cfg, rejects_dir).map_batches(
        key_and_skip_cached, fn_kwargs={"cached": hits}, batch_format="pyarrow"
    )
    reused = ray.data.read_parquet(out_dir).map_batches(
        _keep_keys, fn_kwargs={"keys": hits}, batch_format="pyarrow"
    ) if hits else None
    if reused is not None and len(hits) == len(keys):
        # every record's targets are cached: no SD actor pool (no GPU reserved for it); one
        # pass over the sources writes this run's read rejects (all its rows are cache hits)
        fresh.materialize()
        return reused
    fresh = add_sd_targets(fresh, cfg, rejects_dir).map_batches(
        WriteThrough, fn_constructor_kwargs={"out_dir": out_dir}, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1,
    )
    return fresh if reused is None else reused.union(fresh)


# -------------------------------------------------------------------------------- precomputed
def read_precomputed_targets(cfg: LavenderConfig) -> pa.Table:
    """`id` + target columns from `pipeline.precomputed_path` (Parquet: a cache root, a folder
    of shards or one file)."""
    from lavender_ray.sd.cache import read_target_rows

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
    from lavender_ray.sd.authors import image_name_for, read_word_maps, target_from_word_maps

    found: list[dict[str, Any] | None] = []
    for rid, text in zip(batch["id"].to_pylist(), batch["target_text"].to_pylist()):
        maps = read_word_maps(root, image_name_for(rid))
        found.append(target_from_word_maps(maps, text).to_row() if maps else None)
    return _attach(batch, found, rejects_dir)


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
        found = []
        for rid in batch["id"].to_pylist():
            row = self.rows.get(rid)
            found.append(None if row is None else self.table.slice(row, 1).to_pylist()[0])
        return _attach(batch, found, self.rejects_dir)


def precomputed_dataset(cfg: LavenderConfig, rejects_dir: str):
    import ray

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
