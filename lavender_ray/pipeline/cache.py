"""The SD target cache: Parquet shards keyed by record id + image content hash + config hash.

Layout under a root (local path or any pyarrow filesystem URI such as `s3://bucket/prefix`)::

    <root>/targets/<config hash>/*.parquet   records + `image_sha256` + schema.TARGET_FIELDS
    <root>/rejects/<run id>/*.parquet        schema.REJECT_SCHEMA, one folder per run
    <root>/runs/<run id>.yaml                the resolved config of each run

A record is cached when a shard under its config hash holds a row with the same `id` and the
same `image_sha256` (SHA-256 of the encoded image bytes); a changed image or any change of the
extraction config (`sd.settings.sd_config_hash`) means a new target. `extract_to_cache` is the
write-through path: it skips cached records, extracts the others and appends new shards, so
re-running with the same config does no SD work for what exists. Rejected records are retried
on the next run (a source may have been fixed); each run's rejects are kept in their own folder.
The functions here run inside Ray Data tasks and import no model library; the runs that fill
and read the cache are in `lavender_ray.pipeline.extract`.
"""

from __future__ import annotations

import hashlib
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lavender_ray.storage import filesystem_and_path

IMAGE_HASH = "image_sha256"
TARGETS, REJECTS, RUNS = "targets", "rejects", "runs"

CacheKeys = frozenset[tuple[str, str]]


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with `/`."""
    return "/".join([root.rstrip("/"), *parts])


def targets_dir(root: str, config_hash: str) -> str:
    return join(root, TARGETS, config_hash)


def image_sha256(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def shard_paths(directory: str) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem of `directory` and its `.parquet` files (none if it does not exist)."""
    fs, path = filesystem_and_path(directory)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return fs, []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return fs, sorted(i.path for i in infos if i.path.endswith(".parquet") and i.size)


def read_shards(directory: str, columns: list[str] | None = None) -> pa.Table | None:
    """All non-empty shards under `directory` as one table (None when there are none)."""
    fs, paths = shard_paths(directory)
    tables = [pq.read_table(p, columns=columns, filesystem=fs) for p in paths]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def count_rows(directory: str) -> int:
    """Rows in the shards under `directory`, from the Parquet footers."""
    fs, paths = shard_paths(directory)
    total = 0
    for path in paths:
        with fs.open_input_file(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


class NewShardRows:
    """Rows in the shards written under `directory` since this was made: `new()` reads each new
    file's footer once (a file still being written is counted on a later call)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.seen = set(shard_paths(directory)[1])
        self.rows = 0

    def new(self) -> int:
        fs, paths = shard_paths(self.directory)
        for path in paths:
            if path in self.seen:
                continue
            try:
                with fs.open_input_file(path) as handle:
                    rows = pq.ParquetFile(handle).metadata.num_rows
            except (OSError, pa.ArrowInvalid):
                continue
            self.seen.add(path)
            self.rows += rows
        return self.rows


def cached_keys(root: str, config_hash: str) -> CacheKeys:
    """(id, image_sha256) of every target cached under `config_hash`."""
    table = read_shards(targets_dir(root, config_hash), columns=["id", IMAGE_HASH])
    if table is None:
        return frozenset()
    return frozenset(zip(table["id"].to_pylist(), table[IMAGE_HASH].to_pylist()))


def read_cached_targets(root: str, config_hash: str) -> pa.Table | None:
    """Every cached row (records + image hash + targets) of `config_hash`, or None. A record
    whose image changed has a row per image version: match on (`id`, `image_sha256`)."""
    return read_shards(targets_dir(root, config_hash))


def read_target_rows(location: str) -> pa.Table | None:
    """Target rows from a cache root (all its config hashes), a folder of shards or one
    Parquet file; None when there are none."""
    fs, path = filesystem_and_path(location)
    if path.endswith(".parquet"):
        return pq.read_table(path, filesystem=fs)
    if fs.get_file_info(join(path, TARGETS)).type == pafs.FileType.Directory:
        location = join(location, TARGETS)
    return read_shards(location)


def key_and_skip_cached(batch: pa.Table, cached: CacheKeys) -> pa.Table:
    """`map_batches` function: add `image_sha256`, drop rows whose key is in `cached`."""
    hashes = [image_sha256(b) for b in batch["image"].to_pylist()]
    if IMAGE_HASH in batch.column_names:
        batch = batch.drop_columns([IMAGE_HASH])
    batch = batch.append_column(IMAGE_HASH, pa.array(hashes, type=pa.string()))
    keep = [(rid, h) not in cached for rid, h in zip(batch["id"].to_pylist(), hashes)]
    return batch.filter(pa.array(keep, type=pa.bool_()))


def keep_keys(batch: pa.Table, keys: frozenset[tuple[str, str]]) -> pa.Table:
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


