"""Raw readers for the paper's data sets, each in the layout its publisher ships.

Each `read_<format>(source)` returns a Ray Dataset of raw rows that `formats.FORMATS[<format>]`
converts into records (`sources.read_raw` dispatches through `RAW_READERS`). Paths are local or
any pyarrow filesystem URI; a `path` may name one file or a folder of them.

    flickr30k  Karpathy's `dataset_flickr30k.json` ({"images": [{"filename", "split",
               "sentences": [{"raw", ...}, x5], ...}]}), parsed in one read task (~30 MB), and
               flattened to one row per selected caption; images are read later, per record.
    laion      img2dataset output: WebDataset `.tar` shards (`<key>.jpg` + `<key>.txt` +
               `<key>.json`), streamed by Ray's `read_webdataset` without decoding; or, when the
               folder holds no `.tar`, its Parquet files (image bytes + caption per row). Next to
               tar shards img2dataset writes metadata `.parquet` and `_stats.json`: ignored.
    rlaif_v    RLAIF-V's Parquet shards, streamed by row group.
    ocrvqa     the_cauldron's `ocrvqa` Parquet shards, streamed by row group.

A row a reader cannot unpack (an entry of the Karpathy JSON that is not an object, a file that
is not JSON) is passed on with `READER_REJECT` = "reason: detail" and becomes a reject with that
reason; it is never dropped. A tar shard that is not a valid tar fails the read (the file, not a
row, is broken).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from lavender_ray.config import SourceConfig
from lavender_ray.storage import filesystem_and_path

READER_REJECT = "__reject__"
FLICKR_COLUMNS = ("filename", "imgid", "split", "sentence_index", "caption")


# ------------------------------------------------------------------------------------- helpers
def reader_reject(reason: str, detail: str, **fields: Any) -> dict[str, Any]:
    """A raw row a reader could not unpack: carried to the converter step as a reject."""
    return {**fields, READER_REJECT: f"{reason}: {detail}"}


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
    import ray

    fs, files = list_files(path, (".parquet",))
    return ray.data.read_parquet(files, filesystem=fs)


# ----------------------------------------------------------------------------------- flickr30k
def _caption_rows(entry: dict[str, Any], captions: str) -> list[dict[str, Any]]:
    """One Karpathy image entry -> one row per selected caption (one caption-less row when it
    has none, which the converter rejects as empty_text)."""
    base = {"filename": entry.get("filename"), "imgid": entry.get("imgid"),
            "split": entry.get("split")}
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        return [{**base, "sentence_index": 0, "caption": None}]
    chosen = sentences[:1] if captions == "first" else sentences
    return [
        {**base, "sentence_index": k, "caption": s.get("raw") if isinstance(s, dict) else None}
        for k, s in enumerate(chosen)
    ]


def flickr30k_rows(
    file_row: dict[str, Any], splits: list[str] | None, captions: str
) -> list[dict[str, Any]]:
    """`flat_map`: one `read_binary_files` row of the Karpathy JSON -> caption rows of the
    selected splits (every row has exactly `FLICKR_COLUMNS` + `READER_REJECT`)."""
    empty = dict.fromkeys(FLICKR_COLUMNS)
    try:
        payload = json.loads(file_row["bytes"])
        entries = payload["images"]
        if not isinstance(entries, list):
            raise TypeError(f"'images' is a {type(entries).__name__}, not a list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        detail = f"{file_row['path']} is not Karpathy's JSON ({{'images': [...]}}): {err!r:.200}"
        return [reader_reject("bad_json", detail, **{**empty, "filename": file_row["path"]})]
    rows = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            rows.append(reader_reject("bad_json", f"images[{i}] is not an object",
                                      **{**empty, "imgid": i, "sentence_index": 0}))
        elif splits is None or entry.get("split") in splits:
            rows += [{**row, READER_REJECT: None} for row in _caption_rows(entry, captions)]
    return rows


def read_flickr30k(source: SourceConfig):
    """The Karpathy JSON file(s) under `path` -> caption rows (`flickr30k_rows`)."""
    import ray

    fs, files = list_files(_path(source), (".json",))
    return ray.data.read_binary_files(files, filesystem=fs, include_paths=True).flat_map(
        flickr30k_rows, fn_kwargs={"splits": source.splits, "captions": source.captions}
    )


# --------------------------------------------------------------------------------------- laion
def read_laion(source: SourceConfig):
    """img2dataset WebDataset shards, else its Parquet files (see the module docstring)."""
    import ray

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
