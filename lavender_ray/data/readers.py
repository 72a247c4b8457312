"""The raw rows of the paper's data sets, each in the layout its publisher ships.

`lavender_ray.pipeline.read.RAW_READERS` reads each layout with Ray Data (a `path` may name one
file or a folder of them, local or any pyarrow URI); what needs unpacking before
`formats.FORMATS[<format>]` converts a row into a record is here, pure:

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
from typing import Any

READER_REJECT = "__reject__"
FLICKR_COLUMNS = ("filename", "imgid", "split", "sentence_index", "caption")


# ------------------------------------------------------------------------------------- helpers
def reader_reject(reason: str, detail: str, **fields: Any) -> dict[str, Any]:
    """A raw row a reader could not unpack: carried to the converter step as a reject."""
    return {**fields, READER_REJECT: f"{reason}: {detail}"}


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
