"""Raw rows from data files: JSON lines, JSON arrays, and the paper's data sets in the layout
each publisher ships.

JSONL and JSON files are read whole by one task (as Ray's `read_text` does) and split here:
`jsonl_rows` splits on "\\n" only (an optional "\\r" before it is dropped), so U+2028, U+0085
or a form feed inside a JSON string stays in its row (Ray's `read_text` splits lines on those
too); each line is decoded on its own, so one line that is not UTF-8 is one `bad_encoding`
reject, not a failed read. A byte-order mark is honoured (UTF-8, UTF-16 and UTF-32 files); a
UTF-16/32 file without one shows as NUL bytes and is rejected line by line. Every text row is
`{"text", DATA_FILE, ROW_AT, READER_REJECT}`: its JSON text, the data file it came from
(relative image references resolve against its folder) and where in it ("train.jsonl:17",
"llava.json[3]"), the id of a row whose JSON cannot give one.

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
row, is broken): `lavender_ray.data.checks.check_input_paths` finds it before Ray starts.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

READER_REJECT = "__reject__"
DATA_FILE = "__file__"
ROW_AT = "__at__"
RAY_PATH = "path"  # the column Ray's `include_paths` adds to Parquet rows (not data)
# byte-order marks, longest first (the UTF-32-LE mark starts with the UTF-16-LE one)
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
FLICKR_COLUMNS = ("filename", "imgid", "split", "sentence_index", "caption")


# ------------------------------------------------------------------------------------- helpers
def reader_reject(reason: str, detail: str, **fields: Any) -> dict[str, Any]:
    """A raw row a reader could not unpack: carried to the converter step as a reject."""
    return {**fields, READER_REJECT: f"{reason}: {detail}"}


def decode_text(data: bytes) -> str:
    """A whole text file -> str: the encoding its byte-order mark names, else UTF-8. Raises
    UnicodeDecodeError."""
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    return data.decode(encoding)


def text_row(text: str | None, path: str, at: str, reject: str | None = None) -> dict[str, Any]:
    """One raw text row (module docstring); `reject`: "reason: detail" instead of text."""
    return {"text": text, DATA_FILE: path, ROW_AT: at, READER_REJECT: reject}


def jsonl_rows(file_row: dict[str, Any]) -> list[dict[str, Any]]:
    """`flat_map`: one JSONL file (a `read_binary_files` row with its path) -> a text row per
    non-blank line (module docstring)."""
    data, path = file_row["bytes"], file_row["path"]
    name = path.rsplit("/", 1)[-1]
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), None)
    if encoding not in (None, "utf-8-sig"):  # UTF-16/32: the file decodes as a whole
        try:
            lines = [line.encode("utf-8", "surrogatepass")
                     for line in data.decode(encoding).split("\n")]
        except UnicodeDecodeError as err:
            detail = f"{path} is not valid {encoding} (byte {err.start}): {err.reason}"
            return [text_row(None, path, f"{name}:1", f"bad_encoding: {detail}")]
    else:
        lines = data.split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix(b"\r")
        if not line.strip(b" \t\r\x00"):  # blank; a UTF-16-LE file's last line is one NUL
            continue
        at = f"{name}:{number}"
        if b"\x00" in line:
            detail = (f"{path} line {number} holds NUL bytes: a UTF-16/32 file without a "
                      "byte-order mark? (save it as UTF-8)")
            rows.append(text_row(None, path, at, f"bad_encoding: {detail}"))
            continue
        try:
            text = line.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError as err:
            detail = (f"{path} line {number} is not UTF-8 (byte {line[err.start]:#04x} at "
                      f"{err.start}): {line[:60]!r}")
            rows.append(text_row(None, path, at, f"bad_encoding: {detail}"))
            continue
        if text.strip():
            rows.append(text_row(text, path, at))
    return rows


def json_array_rows(file_row: dict[str, Any]) -> list[dict[str, Any]]:
    """`flat_map`: one JSON file (an array of objects, or one object) -> a text row per entry;
    a file that is not one JSON value is one `bad_json` (or `bad_encoding`) row."""
    path = file_row["path"]
    name = path.rsplit("/", 1)[-1]
    try:
        payload = json.loads(decode_text(file_row["bytes"]), strict=False)
    except UnicodeDecodeError as err:
        detail = f"{path} is not UTF-8 (byte {err.start}): {err.reason}"
        return [text_row(None, path, name, f"bad_encoding: {detail}")]
    except (ValueError, RecursionError) as err:
        hint = ("; a file of one object per line must be named .jsonl"
                if "Extra data" in str(err) else "")
        detail = f"{path} is not one JSON value ({type(err).__name__}: {err}){hint}"[:400]
        return [text_row(None, path, name, f"bad_json: {detail}")]
    entries = payload if isinstance(payload, list) else [payload]
    return [text_row(json.dumps(e), path, f"{name}[{i}]") for i, e in enumerate(entries)]


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
        payload = json.loads(decode_text(file_row["bytes"]), strict=False)
        entries = payload["images"]
        if not isinstance(entries, list):
            raise TypeError(f"'images' is a {type(entries).__name__}, not a list")
    except (ValueError, KeyError, TypeError, RecursionError) as err:
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
