"""Filling and reading the SD target cache (layout: `lavender_ray.pipeline.cache`).

    summary = extract_to_cache(cfg, "s3://bucket/sd_cache")   # `lavender extract`
    ds = cached_dataset(cfg, rejects_dir)                      # training in pipeline.mode=cache

`extract_to_cache` reads the configured sources (or a given Dataset), skips the records cached
under this extraction config, runs the SD stage on the rest and appends the results as Parquet
shards. `cached_dataset` reads back the cached targets of this run's records and streams the
rest through the SD stage, written through to the cache; when every record is cached no SD actor
pool starts. Each run's rejects and resolved config are kept under the cache root.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray

from lavender_ray import console
from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.pipeline.cache import (
    IMAGE_HASH,
    REJECTS,
    RUNS,
    NewShardRows,
    WriteThrough,
    cached_keys,
    count_rows,
    join,
    keep_keys,
    key_and_skip_cached,
    read_cached_targets,
    targets_dir,
)
from lavender_ray.pipeline.preflight import check_sources
from lavender_ray.pipeline.read import read_parquet, read_sources
from lavender_ray.pipeline.sd_stage import add_sd_targets, stage_device
from lavender_ray.rejects import count_rejects
from lavender_ray.resources import connect
from lavender_ray.schema import TARGET_FIELDS
from lavender_ray.sd.authors import export_targets
from lavender_ray.sd.settings import sd_config_hash
from lavender_ray.storage import absolute, filesystem_and_path
from lavender_ray.watchdog import stall_watchdog

if TYPE_CHECKING:
    from ray.data import Dataset

POLL_S = 5.0  # how often the progress display counts the written shards


@dataclass(frozen=True)
class ExtractSummary:
    """What one `extract_to_cache` run did."""

    config_hash: str
    targets_dir: str
    rejects_dir: str
    config_path: str
    cached_before: int
    written: int
    rejects: dict[str, int]


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def save_run_config(cfg: LavenderConfig, root: str, run_id: str) -> str:
    fs, path = filesystem_and_path(join(root, RUNS, f"{run_id}.yaml"))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(cfg.to_yaml().encode())
    return path


def extract_to_cache(cfg: LavenderConfig, root: str, ds: Dataset | None = None) -> ExtractSummary:
    """Read the configured sources (or take `ds`, a Dataset of records), skip what is cached
    under this config, run the SD stage on the rest and append the results as Parquet shards.

    In a command (`console.active`) a progress display counts the records written (the rows
    of the new shards, `POLL_S`) against the records to do, counted first by a read of the
    sources without SD (`count_todo`; not for a given `ds`)."""
    check_sources(cfg)
    connect(cfg, "extract")
    root = absolute(root)
    run_id = new_run_id()
    config_hash = sd_config_hash(cfg.sd, stage_device(cfg))
    rejects_dir = join(root, REJECTS, run_id)
    counted = ds is None and console.active()  # a given Dataset is not run twice
    if ds is None:
        ds = read_sources(cfg, rejects_dir)
    config_path = save_run_config(cfg, root, run_id)
    out_dir = targets_dir(root, config_hash)
    cached = cached_keys(root, config_hash)
    rows_before = count_rows(out_dir)
    todo = ds.map_batches(key_and_skip_cached, fn_kwargs={"cached": cached}, batch_format="pyarrow",
                          num_cpus=cfg.data.read_num_cpus)
    total = count_todo(cfg, cached) if counted else None
    new_rows = NewShardRows(out_dir)
    with (stall_watchdog(cfg.train.stall_timeout_s),
          console.progress("extract", total, unit="records", rate_unit="images") as shown,
          console.polling(lambda: shown.set(new_rows.new()), POLL_S)):
        add_sd_targets(todo, cfg, rejects_dir).write_parquet(
            out_dir, ray_remote_args={"num_cpus": cfg.data.read_num_cpus}
        )
    written = count_rows(out_dir) - rows_before
    rejects = count_rejects(rejects_dir)
    return ExtractSummary(
        config_hash, out_dir, rejects_dir, config_path, len(cached), written, rejects
    )


def count_todo(cfg: LavenderConfig, cached: frozenset) -> int:
    """How many records of the configured sources are not cached yet: a read without SD (and
    without writing rejects: the extraction's own read does)."""
    return read_sources(cfg, None).map_batches(
        key_and_skip_cached, fn_kwargs={"cached": cached}, batch_format="pyarrow",
        num_cpus=cfg.data.read_num_cpus,
    ).count()


def export_authors_layout(root: str, config_hash: str, authors_root: str) -> int:
    """Write every target cached under `config_hash` in the authors' layout (local folder)."""
    table = read_cached_targets(root, config_hash)
    if table is None:
        return 0
    columns = ["id"] + [name for name, _ in TARGET_FIELDS]
    return export_targets(table.select(columns).to_pylist(), authors_root)


def _record_keys(cfg: LavenderConfig) -> set[tuple[str, str]]:
    """(id, image_sha256) of every record the sources yield (a read without SD)."""
    # no rejects written: the streaming read of the same sources records them
    keyed = read_sources(cfg, None).map_batches(
        key_and_skip_cached, fn_kwargs={"cached": frozenset()}, batch_format="pyarrow",
        num_cpus=cfg.data.read_num_cpus,
    )
    rows = keyed.select_columns(["id", IMAGE_HASH]).take_all()
    return {(r["id"], r[IMAGE_HASH]) for r in rows}


def cached_dataset(cfg: LavenderConfig, rejects_dir: str):
    """Cached targets of this run's records + SD over the rest, written through to the cache."""
    if not cfg.pipeline.cache_path:
        raise ConfigError("pipeline.mode=cache needs pipeline.cache_path (local path or URI)")
    root = absolute(cfg.pipeline.cache_path)
    out_dir = targets_dir(root, sd_config_hash(cfg.sd, stage_device(cfg)))
    cached = cached_keys(root, out_dir.rsplit("/", 1)[-1])
    keys = _record_keys(cfg) if cached else set()
    hits = frozenset(keys & cached)
    fresh = read_sources(cfg, rejects_dir).map_batches(
        key_and_skip_cached, fn_kwargs={"cached": hits}, batch_format="pyarrow",
        num_cpus=cfg.data.read_num_cpus,
    )
    reused = read_parquet(out_dir, cfg.data.read_num_cpus).map_batches(
        keep_keys, fn_kwargs={"keys": hits}, batch_format="pyarrow",
        num_cpus=cfg.data.read_num_cpus,
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
