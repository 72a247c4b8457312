"""The input paths of a run, checked before Ray starts (pure: pyarrow filesystems, no Ray).

    check_input_paths(cfg)   # raises ConfigError, one line naming the key and the path

A source's `path` is a file or a folder (searched recursively), local or any pyarrow filesystem
URI; `list_files` finds the files each format reads (`SOURCE_EXTENSIONS`), and the readers of
`lavender_ray.pipeline.read` read exactly those. A path that does not exist, holds no file of
its format, or holds a file Ray's readers would fail on as a whole (an empty or non-Parquet
`.parquet`, an unreadable local file) stops the command before any work, instead of failing a
read task minutes later; `image_root` must be a folder. A model id that names a local folder
(`sd.model_id`, `vlm.model_id`: a path, where a Hub id is `org/name`) must hold that model's
files (`MODEL_FILES`), else loading it fails inside a worker after Ray and its actors started.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from lavender_ray.config import ConfigError, LavenderConfig, SourceConfig, model_folder
from lavender_ray.storage import filesystem_and_path, is_uri

# the files each source format reads; `messages` and `llava` rows come as JSON lines, JSON
# arrays or Parquet rows alike (the format is the row layout, the extension the file layout)
SOURCE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "messages": (".jsonl", ".json", ".parquet"),
    "llava": (".json", ".jsonl", ".parquet"),
    "records": (".parquet",),
    "flickr30k": (".json",),
    "laion": (".tar", ".parquet"),
    "rlaif_v": (".parquet",),
    "ocrvqa": (".parquet",),
}
# the file that makes a local folder a model of each section (diffusers, transformers)
MODEL_FILES = {"sd": "model_index.json", "vlm": "config.json"}
PARQUET_MAGIC = b"PAR1"
TAR_MAGIC, TAR_MAGIC_AT = b"ustar", 257  # POSIX and GNU tar headers


def list_files(path: str, extensions: tuple[str, ...]) -> tuple[pafs.FileSystem, list[str]]:
    """`path` (a file, or a folder searched recursively) -> its files ending in `extensions`,
    sorted, as paths inside the returned filesystem. Raises FileNotFoundError whose message
    starts with `repr(path)` and says what is wrong."""
    fs, inner = filesystem_and_path(path)
    info = fs.get_file_info(inner)
    kinds = "/".join(extensions)
    if info.type == pafs.FileType.File:
        if not inner.endswith(extensions):
            raise FileNotFoundError(f"{path!r} is not a {kinds} file")
        return fs, [inner]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{path!r} does not exist")
    selector = pafs.FileSelector(inner, recursive=True)
    files = sorted(f.path for f in fs.get_file_info(selector)
                   if f.type == pafs.FileType.File and f.path.endswith(extensions))
    if not files:
        raise FileNotFoundError(f"{path!r} holds no {kinds} file")
    return fs, files


def source_files(source: SourceConfig) -> tuple[pafs.FileSystem, list[str]]:
    """The files `source` reads. LAION reads its `.tar` shards, or its Parquet files when the
    folder holds no shard (img2dataset writes metadata Parquet next to the shards)."""
    assert source.path, "SourceConfig validation guarantees a path for file formats"
    extensions = SOURCE_EXTENSIONS[source.format]
    if source.format == "laion":
        try:
            return list_files(source.path, (".tar",))
        except FileNotFoundError:
            return list_files(source.path, (".parquet",))
    return list_files(source.path, extensions)


def file_prefix(source: SourceConfig) -> str:
    """What turns a path inside the source's filesystem (Ray's `include_paths`) back into a
    path or URI: "" locally, "s3://" for `s3://bucket/...`, "hdfs://host:port" for HDFS."""
    if not source.path or not is_uri(source.path):
        return ""
    path = source.path.rstrip("/")
    _, inner = filesystem_and_path(path)
    inner = inner.rstrip("/")
    if inner and path.endswith(inner):
        return path[: len(path) - len(inner)]
    return path.split("://", 1)[0] + "://"


def check_input_paths(cfg: LavenderConfig) -> None:
    """Every source's `path` and `image_root`, and the model folders (`check_model_folders`),
    or ConfigError naming the first bad one, e.g.
    "data.sources[train].path='/x/train.jsonl' does not exist"."""
    check_model_folders(cfg)
    for source in cfg.data.sources:
        if source.format == "synthetic":
            continue
        key = f"data.sources[{source.name}]"
        try:
            fs, files = source_files(source)
        except FileNotFoundError as err:
            raise ConfigError(f"{key}.path={err}") from None
        problem = next((p for p in (_file_problem(fs, f) for f in files) if p), None)
        if problem:
            raise ConfigError(f"{key}.path={source.path!r}: {problem}")
        if source.image_root:
            _check_folder(f"{key}.image_root", source.image_root)


def check_model_folders(cfg: LavenderConfig) -> None:
    """`sd.model_id` and `vlm.model_id` when they name a local folder (`config.model_folder`):
    it must exist and hold its `MODEL_FILES` entry."""
    for section, marker in MODEL_FILES.items():
        model_id = getattr(cfg, section).model_id
        folder = model_folder(model_id)
        if folder is None:
            continue  # a Hub id or a tiny model
        if not os.path.isdir(folder):
            raise ConfigError(f"{section}.model_id={model_id!r}: no such folder")
        if not os.path.isfile(os.path.join(folder, marker)):
            raise ConfigError(
                f"{section}.model_id={model_id!r} is a folder without {marker}: not a saved "
                f"{'diffusers pipeline' if section == 'sd' else 'transformers model'} "
                "(save_pretrained writes one; a Hub id is written org/name)"
            )


def _file_problem(fs: pafs.FileSystem, path: str) -> str | None:
    """What makes one data file unreadable as a whole, or None. Sizes for every filesystem;
    permissions and the Parquet magic bytes only locally (cheap there, a request per file on
    object storage)."""
    info = fs.get_file_info(path)
    if info.size == 0 and path.endswith((".parquet", ".tar")):
        return f"{path} is an empty file (0 bytes)"
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    if not os.access(path, os.R_OK):
        return f"{path} is not readable (permissions)"
    with open(path, "rb") as f:
        head = f.read(TAR_MAGIC_AT + len(TAR_MAGIC))
        f.seek(max(0, (info.size or 0) - 4))
        tail = f.read(4)
    if path.endswith(".parquet") and not (head[:4] == tail == PARQUET_MAGIC):
        return f"{path} is not a Parquet file (no PAR1 magic bytes)"
    if path.endswith(".tar") and head[TAR_MAGIC_AT:] != TAR_MAGIC:
        return f"{path} is not a tar archive (no ustar magic bytes)"
    return None


def _check_folder(key: str, path: str) -> None:
    fs, inner = filesystem_and_path(path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.NotFound:
        raise ConfigError(f"{key}={path!r} does not exist")
    if kind != pafs.FileType.Directory:
        raise ConfigError(f"{key}={path!r} is not a folder")
    if not is_uri(path) and not os.access(inner, os.R_OK | os.X_OK):
        raise ConfigError(f"{key}={path!r} is not readable (permissions)")
