"""Reading the configured sources with Ray Data: every source -> one Dataset of records
(`schema.RECORD_SCHEMA`).

Reading streams: JSONL is read line by line (`read_text`), Parquet by row groups, JSON arrays
one file per task; the paper's data sets through their own raw readers (`RAW_READERS`, in the
layout each publisher ships; the row unpacking is `lavender_ray.data.readers`). Each raw row
goes through the pure converter of its format (`lavender_ray.data.mixture.convert_rows`); rows
that fail are written to the rejects folder with their id and reason, never dropped silently.
Paths are local or any pyarrow filesystem URI.

Mixture sampling (`lavender_ray.data.mixture`) decides per record id before any image is read,
the same in every pipeline mode (stream, cache and precomputed all read through
`read_sources`); the raw rows of a source that needs its fraction from `data.total_samples` are
counted once here (Parquet from its metadata, other layouts by one pass without images).
`max_samples` then caps a source (the first records read; which ones depends on read order).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from lavender_ray.config import DataConfig, LavenderConfig, SourceConfig
from lavender_ray.data.mixture import READ_STAGE, convert_rows, source_fraction, source_quotas
from lavender_ray.data.readers import flickr30k_rows
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import RECORD_SCHEMA
from lavender_ray.storage import filesystem_and_path


# ------------------------------------------------------------------------------ raw readers
def list_files(path: str, extensions: tuple[str, ...]) -> tuple[pafs.FileSystem, list[str]]:
    """`path` (a file, or a folder searched recursively) -> its files ending in `extensions`,
    sorted. Raises FileNotFoundError naming the path and the extensions looked for."""
    fs, inner = filesystem_and_path(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.File:
        files = [inner] if inner.endswith(extensions) else []
    elif info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(inner, recursive=True)
        files = sorted(f.path for f in fs.get_file_info(selector)
                       if f.type == pafs.FileType.File and f.path.endswith(extensions))
    else:
        raise FileNotFoundError(f"{path!r} does not exist")
    if not files:
        raise FileNotFoundError(f"{path!r} holds no files ending in {', '.join(extensions)}")
    return fs, files


def _path(source: SourceConfig) -> str:
    assert source.path, "SourceConfig validation guarantees a path for file formats"
    return source.path


def read_parquet_files(path: str):
    """Every `.parquet` file under `path` as one streamed Dataset."""
    fs, files = list_files(path, (".parquet",))
    return ray.data.read_parquet(files, filesystem=fs)


def read_flickr30k(source: SourceConfig):
    """The Karpathy JSON file(s) under `path` -> caption rows (`flickr30k_rows`)."""
    fs, files = list_files(_path(source), (".json",))
    return ray.data.read_binary_files(files, filesystem=fs, include_paths=True).flat_map(
        flickr30k_rows, fn_kwargs={"splits": source.splits, "captions": source.captions}
    )


# --------------------------------------------------------------------------------------- laion
def read_laion(source: SourceConfig):
    """img2dataset WebDataset shards, else its Parquet files (see the module docstring)."""
    try:
        fs, shards = list_files(_path(source), (".tar",))
    except FileNotFoundError:
        try:
            fs, files = list_files(_path(source), (".parquet",))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"source {source.name!r}: no img2dataset output (.tar shards or .parquet) "
                f"at {source.path!r} ({err})"
            ) from None
        return ray.data.read_parquet(files, filesystem=fs)
    return ray.data.read_webdataset(shards, filesystem=fs, decoder=None)


# ------------------------------------------------------------------------- rlaif_v and ocrvqa
def read_parquet_source(source: SourceConfig):
    """RLAIF-V and the_cauldron ship Parquet shards: every `.parquet` file under `path`."""
    return read_parquet_files(_path(source))


# --------------------------------------------------------------------------------- dispatching
RAW_READERS: dict[str, Callable[[SourceConfig], Any]] = {
    "flickr30k": read_flickr30k,
    "laion": read_laion,
    "rlaif_v": read_parquet_source,
    "ocrvqa": read_parquet_source,
}


# ------------------------------------------------------------------------------------ sampling
def sampling_fractions(data: DataConfig) -> dict[str, float]:
    """{source name: keep probability}; counts the raw rows of sources that need it."""
    quotas = source_quotas(data)
    fractions = {}
    for source in data.sources:
        quota = quotas.get(source.name)
        needs_count = source.fraction is None and quota is not None
        raw_rows = read_raw(source, data, seed=data.seed).count() if needs_count else None
        fractions[source.name] = source_fraction(source, quota, raw_rows)
    return fractions


def to_records(
    batch: pa.Table, source: dict[str, Any], data: dict[str, Any], rejects_dir: str | None,
    fraction: float = 1.0,
) -> pa.Table:
    """`map_batches` function (pyarrow batches): raw rows of one source -> record rows.

    Takes plain dicts (workers rebuild the config sections themselves)."""
    records, rejects = convert_rows(
        batch.to_pylist(), SourceConfig.model_validate(source), DataConfig.model_validate(data),
        fraction,
    )
    write_rejects(rejects, rejects_dir, READ_STAGE)
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


# ------------------------------------------------------------------------------------- reading
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
    if source.format == "synthetic":
        return ray.data.from_items(make_synthetic_records(source.num_samples, seed=seed))
    if source.format in RAW_READERS:
        return RAW_READERS[source.format](source)
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


def read_source(
    source: SourceConfig, data: DataConfig, rejects_dir: str | None,
    fraction: float | None = None,
):
    """One source -> Dataset of records; bad rows go to `rejects_dir` (None: not written).
    `fraction` defaults to the source's own (`sampling_fractions` resolves it against
    `data.total_samples`)."""
    ds = read_raw(source, data, seed=data.seed)
    ds = ds.map_batches(
        to_records,
        fn_kwargs={
            "source": source.model_dump(mode="json"),
            "data": data.model_dump(mode="json"),
            "rejects_dir": rejects_dir,
            "fraction": (source.fraction or 1.0) if fraction is None else fraction,
        },
        batch_format="pyarrow",
        num_cpus=data.read_num_cpus,
    )
    if source.max_samples is not None:
        ds = ds.limit(source.max_samples)
    return ds


def read_sources(
    cfg: LavenderConfig, rejects_dir: str | None, fractions: dict[str, float] | None = None
):
    """All of `cfg.data.sources`, sampled -> one Dataset of records. `fractions` (source name
    -> keep probability) defaults to `sampling_fractions(cfg.data)`."""
    fractions = sampling_fractions(cfg.data) if fractions is None else fractions
    datasets = [read_source(s, cfg.data, rejects_dir, fractions[s.name]) for s in cfg.data.sources]
    return datasets[0] if len(datasets) == 1 else datasets[0].union(*datasets[1:])
