"""Reading the configured sources with Ray Data: every source -> one Dataset of records
(`schema.RECORD_SCHEMA`).

A source's `path` is a file or a folder of them (`lavender_ray.data.checks.source_files`; the
commands check every path before Ray starts, `check_input_paths`). Reading streams: JSONL and
JSON files one file per task, split into rows by `lavender_ray.data.readers` (lines end at
"\\n" only, each line decoded on its own), Parquet by row groups; the paper's data sets
through their own raw readers (`RAW_READERS`, in the layout each publisher ships). Every raw
row carries the data file it came from, so its relative image references resolve against that
file's folder (unless `image_root` is set). Each raw row goes through the pure converter of its
format (`lavender_ray.data.mixture.convert_rows`) and its image through
`lavender_ray.images.check_image`; rows that fail are written to the rejects folder with their
id and reason, never dropped silently, and no row fails the read. Paths are local or any
pyarrow filesystem URI; a top-level Parquet column named `path` is where Ray puts the file's
path (`include_paths`), so it is not read as data.

Mixture sampling (`lavender_ray.data.mixture`) decides per record id before any image is read,
the same in every pipeline mode (stream, cache and precomputed all read through
`read_sources`); the raw rows of a source that needs its fraction from `data.total_samples` are
counted once here (Parquet from its metadata, other layouts by one pass without images).
`max_samples` then caps a source (the first records read; which ones depends on read order).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from lavender_ray.config import DataConfig, LavenderConfig, SourceConfig
from lavender_ray.data.checks import file_prefix, source_files
from lavender_ray.data.mixture import READ_STAGE, convert_rows, source_fraction, source_quotas
from lavender_ray.data.readers import (
    DATA_FILE,
    RAY_PATH,
    READER_REJECT,
    ROW_AT,
    flickr30k_rows,
    json_array_rows,
    jsonl_rows,
)
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.images import check_image
from lavender_ray.rejects import write_rejects
from lavender_ray.schema import RECORD_SCHEMA


# ------------------------------------------------------------------------------ raw readers
def read_parquet(paths: str | list[str], num_cpus: float, **kwargs: Any):
    """`ray.data.read_parquet` with every task asking for `num_cpus`.

    Ray 2.60 reads Parquet through its DataSourceV2 chain by default, whose file-listing task
    always asks for a whole CPU (`ray.data._internal.planner.plan_list_files_op`, no way to
    pass resources): on a small cluster whose CPUs the train workers and stage actors hold,
    that task is never placed and the read waits forever. The V1 reader honours `num_cpus`
    for all its tasks, so it is chosen for this call."""
    context = ray.data.DataContext.get_current()
    chosen = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, num_cpus=num_cpus, **kwargs)
    finally:
        context.use_datasource_v2 = chosen


def read_data_files(fs: pafs.FileSystem, files: list[str], num_cpus: float) -> list[Any]:
    """JSONL / JSON files and Parquet files -> one raw Dataset for the text files and one per
    Parquet schema (their columns differ, so each is converted on its own before the records
    are joined). Every read and split task asks for `num_cpus` (`read_raw`)."""
    parts = []
    text = [f for f in files if f.endswith((".jsonl", ".json"))]
    if text:
        parts.append(ray.data.read_binary_files(text, filesystem=fs, include_paths=True,
                                                num_cpus=num_cpus)
                     .flat_map(text_file_rows, num_cpus=num_cpus))
    parquet = [f for f in files if f.endswith(".parquet")]
    if parquet:
        parts += read_parquet_files(fs, parquet, num_cpus)
    return parts


def text_file_rows(file_row: dict[str, Any]) -> list[dict[str, Any]]:
    """`flat_map`: a JSONL file line by line, a JSON file entry by entry (`data.readers`)."""
    split = jsonl_rows if file_row["path"].endswith(".jsonl") else json_array_rows
    return split(file_row)


def read_parquet_files(fs: pafs.FileSystem, files: list[str], num_cpus: float) -> list[Any]:
    """Parquet files streamed by row group, each row with its file in Ray's `path` column
    (`to_records` renames it `readers.DATA_FILE`; a count still reads only the metadata).

    Ray reads files whose schemas unify together; files whose column types disagree (one
    writes `images` as a list, another as a number) cannot be, so then the files are grouped
    by schemas that unify, each group is read on its own, and the converter judges the rows."""
    try:
        return [read_parquet(files, num_cpus, filesystem=fs, include_paths=True)]
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    groups: list[tuple[pa.Schema, list[str]]] = []
    for path in files:
        schema = pq.read_schema(path, filesystem=fs)
        for k, (unified, members) in enumerate(groups):
            try:
                groups[k] = (pa.unify_schemas([unified, schema]), [*members, path])
                break
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                continue
        else:
            groups.append((schema, [path]))
    return [read_parquet(members, num_cpus, filesystem=fs, include_paths=True)
            for _, members in groups]


def read_flickr30k(source: SourceConfig, num_cpus: float) -> list[Any]:
    """The Karpathy JSON file(s) under `path` -> caption rows (`flickr30k_rows`)."""
    fs, files = source_files(source)
    return [ray.data.read_binary_files(files, filesystem=fs, include_paths=True,
                                       num_cpus=num_cpus).flat_map(
        flickr30k_rows, fn_kwargs={"splits": source.splits, "captions": source.captions},
        num_cpus=num_cpus,
    )]


# --------------------------------------------------------------------------------------- laion
def read_laion(source: SourceConfig, num_cpus: float) -> list[Any]:
    """img2dataset WebDataset shards, else its Parquet files (see the module docstring)."""
    try:
        fs, files = source_files(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"source {source.name!r}: no img2dataset output (.tar shards or .parquet) "
            f"at {source.path!r} ({err})"
        ) from None
    if files[0].endswith(".tar"):
        return [ray.data.read_webdataset(files, filesystem=fs, decoder=None,
                                         num_cpus=num_cpus)]
    return read_parquet_files(fs, files, num_cpus)


# ------------------------------------------------------------------------- rlaif_v and ocrvqa
def read_source_files(source: SourceConfig, num_cpus: float) -> list[Any]:
    """Sources read from their files as they are: messages, llava, records (any of their
    extensions), RLAIF-V and the_cauldron (Parquet shards)."""
    return read_data_files(*source_files(source), num_cpus)


# --------------------------------------------------------------------------------- dispatching
RAW_READERS: dict[str, Callable[[SourceConfig, float], list[Any]]] = {
    "flickr30k": read_flickr30k,
    "laion": read_laion,
}


def read_raw(source: SourceConfig, data: DataConfig, seed: int) -> list[Any]:
    """The raw rows of one source as Ray Datasets (before conversion), one per file kind.
    Every read task asks for `data.read_num_cpus`: Ray's default, a whole CPU per task, would
    leave reads pending on a small machine whose CPUs the stages hold, and the resource plan
    (`lavender_ray.resources`) counts them at `data.read_num_cpus`."""
    if source.format == "synthetic":
        return [ray.data.from_items(make_synthetic_records(source.num_samples, seed=seed))]
    return RAW_READERS.get(source.format, read_source_files)(source, data.read_num_cpus)


# ------------------------------------------------------------------------------------ sampling
def sampling_fractions(data: DataConfig) -> dict[str, float]:
    """{source name: keep probability}; counts the raw rows of sources that need it."""
    quotas = source_quotas(data)
    fractions = {}
    for source in data.sources:
        quota = quotas.get(source.name)
        needs_count = source.fraction is None and quota is not None
        raw_rows = (sum(part.count() for part in read_raw(source, data, seed=data.seed))
                    if needs_count else None)
        fractions[source.name] = source_fraction(source, quota, raw_rows)
    return fractions


def table_rows(batch: pa.Table) -> list[dict[str, Any]]:
    """A batch's rows as dicts. A Parquet string that is not UTF-8 fails Arrow's conversion of
    the whole batch; then each row is converted alone, and a row that fails becomes a
    `bad_encoding` reader reject naming its columns."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    rows = []
    for i in range(batch.num_rows):
        one = batch.slice(i, 1)
        try:
            rows.append(one.to_pylist()[0])
        except UnicodeDecodeError:
            rows.append(_undecodable_row(one))
    return rows


def _undecodable_row(one: pa.Table) -> dict[str, Any]:
    """A one-row table with a string that is not UTF-8 -> a reader reject naming the columns."""
    columns = []
    for name in one.column_names:
        try:
            one[name].to_pylist()
        except UnicodeDecodeError:
            columns.append(name)
    data_file = one[DATA_FILE][0].as_py() if DATA_FILE in one.column_names else None
    as_bytes = [one[c].cast(pa.binary()).to_pylist() if c in columns else one[c].to_pylist()
                for c in one.column_names]
    digest = hashlib.sha1(repr(as_bytes).encode("utf-8", "backslashreplace")).hexdigest()[:12]
    where = (data_file or "the data file").rsplit("/", 1)[-1]
    return {DATA_FILE: data_file, ROW_AT: f"{where}:{digest}",
            READER_REJECT: f"bad_encoding: {where}: column(s) {columns} not UTF-8"}


def to_records(
    batch: pa.Table, source: dict[str, Any], data: dict[str, Any], rejects_dir: str | None,
    fraction: float = 1.0, prefix: str = "",
) -> pa.Table:
    """`map_batches` function (pyarrow batches): raw rows of one source -> record rows.

    Takes plain dicts (workers rebuild the config sections themselves)."""
    if RAY_PATH in batch.column_names and DATA_FILE not in batch.column_names:  # Parquet rows
        names = batch.column_names
        batch = batch.rename_columns([DATA_FILE if c == RAY_PATH else c for c in names])
    data_cfg = DataConfig.model_validate(data)
    records, rejects = convert_rows(
        table_rows(batch), SourceConfig.model_validate(source), data_cfg, fraction,
        check_image=functools.partial(check_image, max_pixels=data_cfg.max_image_pixels),
        file_prefix=prefix,
    )
    write_rejects(rejects, rejects_dir, READ_STAGE)
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


# ------------------------------------------------------------------------------------- reading
def read_source(
    source: SourceConfig, data: DataConfig, rejects_dir: str | None,
    fraction: float | None = None,
):
    """One source -> Dataset of records; bad rows go to `rejects_dir` (None: not written).
    `fraction` defaults to the source's own (`sampling_fractions` resolves it against
    `data.total_samples`)."""
    fn_kwargs = {
        "source": source.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "rejects_dir": rejects_dir,
        "fraction": (source.fraction or 1.0) if fraction is None else fraction,
        "prefix": file_prefix(source),
    }
    parts = [part.map_batches(to_records, fn_kwargs=fn_kwargs, batch_format="pyarrow",
                              num_cpus=data.read_num_cpus)
             for part in read_raw(source, data, seed=data.seed)]
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
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
