"""An adversarial corpus in every input format the project reads, as an attacker and a careless
user would write it: broken encodings, line separators inside strings, URLs, image fields of the
wrong type, missing / empty / corrupt / truncated / huge / tiny / absurdly shaped images,
conversations the chat templates cannot render, relative paths in subfolders. Read through Ray
Data, nothing raises, every row is a record or a reject (records in = records out + rejects, per
source), and each bad row's reject names its problem.

`Corpus.expect(source, id, reason, *needles)` declares one input row: `reason` None means it
must train; otherwise its reject must have that reason and a detail containing every needle."""

from __future__ import annotations

import base64
import codecs
import collections
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_images import png_header_only

from lavender_ray.config import load_config
from lavender_ray.data.checks import check_input_paths
from lavender_ray.data.formats import FORMATS
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.images import MAX_ASPECT_RATIO
from lavender_ray.pipeline.benchmarks import read_benchmark
from lavender_ray.pipeline.read import read_sources
from lavender_ray.rejects import count_rejects, format_counts, read_rejects, summarise_rejects
from lavender_ray.schema import RECORD_SCHEMA

MAX_TEXT = 300
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TURNS = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


# ------------------------------------------------------------------------------------- images
def png(width: int = 16, height: int = 16, shade: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (shade % 256, 120, 40)).save(buf, format="PNG")
    return buf.getvalue()


def noisy_jpeg(size: int = 48) -> bytes:
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


BAD_IMAGES = {  # file name -> (bytes, reason)
    "empty.png": (b"", "empty_image"),
    "corrupt.png": (b"<html>404 Not Found</html>" * 3, "corrupt_image"),
    "truncated.jpg": (noisy_jpeg()[:-60], "truncated_image"),
    "huge.png": (png_header_only(20000, 20000), "image_too_large"),
    "zero.png": (png_header_only(0, 12), "zero_size_image"),
    "dot.png": (png(1, 1), "image_too_small"),
    "thin.png": (png(2, 40), "image_too_small"),
    "strip.png": (png(10, 10 * int(MAX_ASPECT_RATIO) + 10), "extreme_aspect_ratio"),
}


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ok.png").write_bytes(png())
    (folder / "wide.png").write_bytes(png(64, 16, shade=9))
    for name, (data, _) in BAD_IMAGES.items():
        (folder / name).write_bytes(data)


# ------------------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    root: Path
    expected: dict[str, list[tuple[str, str | None, tuple[str, ...]]]] = field(
        default_factory=lambda: collections.defaultdict(list))

    def expect(self, source: str, rid: str, reason: str | None, *needles: str) -> None:
        self.expected[source].append((rid, reason, needles))


class Lines:
    """A JSONL file written line by line, knowing each line's number (ids of unparseable
    lines are `<file>:<line>`)."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines = path, []

    def add(self, line: str | bytes) -> str:
        self.lines.append(line.encode() if isinstance(line, str) else line)
        return f"{self.path.name}:{len(self.lines)}"

    def row(self, row: dict) -> str:
        return self.add(json.dumps(row, ensure_ascii=False))

    def write(self, newline: bytes = b"\n", head: bytes = b"") -> None:
        self.path.write_bytes(head + newline.join(self.lines) + newline)


def user(text: str = "<image>What is shown?") -> dict:
    return {"role": "user", "content": text}


def answer(text: str = "A small orange square.") -> dict:
    return {"role": "assistant", "content": text}


def msg(rid: str, messages: list | None = None, **extra) -> dict:
    row = {"id": rid, "messages": messages or [user(), answer()], "images": ["imgs/ok.png"]}
    return {**row, **extra}


def write_messages(c: Corpus, folder: Path) -> None:
    """A folder of messages files: JSONL (plain, BOM + CRLF, UTF-16 with and without a BOM, in a
    subfolder), JSON arrays, a JSONL misnamed .json, and Parquet files of good and wrong types."""
    write_images(folder / "imgs")
    write_images(folder / "sub" / "pics")
    elsewhere = c.root / "elsewhere"
    write_images(elsewhere)
    s = "msgs"
    t = Lines(folder / "train.jsonl")
    for rid, row in {
        "g-rel": msg("g-rel"),
        "g-abs": msg("g-abs", images=[str(elsewhere / "wide.png")]),
        "g-uri": msg("g-uri", images=[f"file://{elsewhere}/ok.png"]),
        "g-system": msg("g-system", [{"role": "system", "content": "Be brief."}, user(), answer()]),
        "g-multi": msg("g-multi", [user(), answer(), user("And the colour?"), answer("Orange.")]),
        "g-parts": msg("g-parts", [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "What?"}]}, answer()]),
        "g-image-only-question": msg("g-image-only-question", [user("<image>"), answer()]),
        "g-singular": {"id": "g-singular", "messages": [user(), answer()], "image": "imgs/ok.png"},
        "g-dict": msg("g-dict", images=[{"path": "imgs/ok.png"}]),
    }.items():
        c.expect(s, rid, None)
        t.row(row)
    t.add("")  # blank lines are not rows
    t.add("   \t")
    separators = json.dumps(msg("g-separators", [user("a\u2028b\u0085c\u000cd\re\tf"), answer(
        "One row\u2028despite U+2028, U+0085 and a form feed\u000c.")]), ensure_ascii=False)
    t.add(separators.replace("\\f", "\f").replace("\\r", "\r").replace("\\t", "\t"))
    c.expect(s, "g-separators", None)
    for _ in range(2):  # a repeated id is a repeated sample: both train
        t.row(msg("dup"))
        c.expect(s, "dup", None)
    bad_rows = {
        "b-http": (msg("b-http", images=["http://example.com/cat.jpg"]), "remote_image",
                   "http://example.com/cat.jpg"),
        "b-https": (msg("b-https", images=["HTTPS://example.com/a.png?x=1"]), "remote_image",
                    "HTTPS://example.com/a.png"),
        "b-ftp": (msg("b-ftp", images=["ftp://host/a.png"]), "remote_image", "ftp://host/a.png"),
        "b-scheme": (msg("b-scheme", images=["nosuchfs://bucket/a.png"]), "unreadable_image",
                     "nosuchfs://bucket/a.png"),
        "b-data-uri": (msg("b-data-uri", images=["data:image/png;base64,iVBORw0KGgo="]),
                       "bad_image_field", "data: URI"),
        "b-images-string": (msg("b-images-string", images="imgs/ok.png"), "bad_image_field",
                            "must be a list", "'imgs/ok.png'"),
        "b-images-number": (msg("b-images-number", images=7), "bad_image_field", "int"),
        "b-images-object": (msg("b-images-object", images=[{"url": "imgs/ok.png"}]),
                            "bad_image_field", "images[0]", "url"),
        "b-images-nulls": (msg("b-images-nulls", images=[{"bytes": None, "path": None}]),
                           "missing_image", "images[0]"),
        "b-images-list-in-list": (msg("b-images-list-in-list", images=[["imgs/ok.png"]]),
                                  "bad_image_field", "images[0]", "list"),
        "b-three-images": (msg("b-three-images", images=["imgs/ok.png"] * 3), "multiple_images",
                           "3 images"),
        "b-no-images": ({"id": "b-no-images", "messages": [user(), answer()]}, "missing_image",
                        "no 'images'"),
        "b-empty-images": (msg("b-empty-images", images=[]), "missing_image", "empty list"),
        "b-missing-file": (msg("b-missing-file", images=["imgs/gone.png"]), "missing_image",
                           str(folder / "imgs" / "gone.png")),
        "b-folder": (msg("b-folder", images=["imgs"]), "unreadable_image", "is a folder"),
        "b-device": (msg("b-device", images=["/dev/zero"]), "unreadable_image",
                     "/dev/zero", "not a regular file"),
        "b-starts-assistant": (msg("b-starts-assistant", [answer(), user(), answer()]),
                               "bad_conversation", "turn 0", "starts with an assistant"),
        "b-no-user": (msg("b-no-user", [{"role": "system", "content": "s"}, answer()]),
                      "bad_conversation", "turn 1"),
        "b-no-answer": (msg("b-no-answer", [user()]), "bad_conversation", "turn 0", "no answer"),
        "b-tool-role": (msg("b-tool-role", [user(), {"role": "tool", "content": "x"}, answer()]),
                        "bad_conversation", "turn 1", "'tool'"),
        "b-list-role": (msg("b-list-role", [{"role": ["user"], "content": "q"}, answer()]),
                        "bad_conversation", "turn 0"),
        "b-late-system": (msg("b-late-system", [user(), {"role": "system", "content": "s"},
                                                answer()]), "bad_conversation", "turn 1"),
        "b-two-systems": (msg("b-two-systems", [{"role": "system", "content": "a"},
                                                {"role": "system", "content": "b"}, user(),
                                                answer()]), "bad_conversation", "turn 1"),
        "b-two-users": (msg("b-two-users", [user(), user("again"), answer()]),
                        "bad_conversation", "turns 0 and 1"),
        "b-two-answers": (msg("b-two-answers", [user(), answer(), answer("more")]),
                          "bad_conversation", "turns 1 and 2"),
        "b-empty-answer": (msg("b-empty-answer", [user(), answer("")]), "empty_text", "turn 1"),
        "b-blank-answer": (msg("b-blank-answer", [user(), answer(" \n\t ")]), "empty_text",
                           "turn 1"),
        "b-punct-answer": (msg("b-punct-answer", [user(), answer("?!... --")]), "empty_text",
                           "turn 1", "no letter or digit"),
        "b-empty-followup": (msg("b-empty-followup", [user(), answer(), user("  "), answer()]),
                             "empty_question", "turn 2"),
        "b-number-content": (msg("b-number-content", [user(), {"role": "assistant",
                                                               "content": 42}]),
                             "bad_messages", "turn 1"),
        "b-null-content": (msg("b-null-content", [{"role": "user", "content": None}, answer()]),
                           "bad_messages", "turn 0"),
        "b-bad-part": (msg("b-bad-part", [{"role": "user", "content": [
            {"type": "text", "text": 5}]}, answer()]), "bad_messages", "turn 0"),
        "b-turn-string": (msg("b-turn-string", ["hello", answer()]), "bad_messages", "turn 0"),
        "b-messages-string": (msg("b-messages-string", "hello"), "bad_messages", "'messages'"),
        "b-long-system": (msg("b-long-system", [{"role": "system", "content": "x" * (MAX_TEXT + 1)},
                                                user(), answer()]),
                          "text_too_long", "turn 0 (system)", str(MAX_TEXT)),
        "b-long-answer": (msg("b-long-answer", [user(), answer("word " * MAX_TEXT)]),
                          "text_too_long", "turn 1 (assistant)"),
    }
    for rid, (row, reason, *needles) in bad_rows.items():
        t.row(row)
        c.expect(s, rid, reason, *needles)
    for name, (_, reason) in BAD_IMAGES.items():
        t.row(msg(f"b-image-{name}", images=[f"imgs/{name}"]))
        c.expect(s, f"b-image-{name}", reason, str(folder / "imgs" / name))
    t.add('{"id": "b-surrogate", "images": ["imgs/ok.png"], "messages": [{"role": "user", '
          '"content": "q"}, {"role": "assistant", "content": "bad \\ud800 half"}]}')
    c.expect(s, "b-surrogate", "bad_encoding", "turn 1", "surrogate")
    for line, reason, needle in [
        ("{not json", "bad_json", "JSONDecodeError"),
        ("[1, 2, 3]", "bad_json", "got list"),
        ('"a string"', "bad_json", "got str"),
        ("42", "bad_json", "got int"),
        ("null", "bad_json", "got NoneType"),
        ('{"id": 1' + "1" * 5000 + "}", "bad_json", "ValueError"),
        ("[" * 100_000, "bad_json", "RecursionError"),
        (b'{"id": "latin1", "messages": "caf\xe9"}', "bad_encoding", "not UTF-8"),
        (b"\xff\xfegarbage", "bad_encoding", "not UTF-8"),
        ("\x00\x00{}", "bad_encoding", "NUL"),
    ]:
        rid = t.add(line)
        c.expect(s, rid, reason, needle, *([str(t.path)] if reason == "bad_encoding" else []))
    t.write()

    bom = Lines(folder / "bom_crlf.jsonl")  # Windows: a UTF-8 BOM and CRLF line ends
    for rid in ("g-bom-1", "g-bom-2"):
        bom.row(msg(rid))
        c.expect(s, rid, None)
    bom.write(newline=b"\r\n", head=codecs.BOM_UTF8)

    utf16 = [msg("g-utf16-1"),
             msg("g-utf16-2", [user("Qu'est-ce que c'est ?"), answer("Un carré.")]),
             msg("b-utf16", [answer()])]
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in utf16) + "\n"
    (folder / "utf16.jsonl").write_bytes(text.encode("utf-16"))  # with a BOM
    c.expect(s, "g-utf16-1", None)
    c.expect(s, "g-utf16-2", None)
    c.expect(s, "b-utf16", "bad_conversation", "turn 0")
    (folder / "utf16le.jsonl").write_bytes(text.encode("utf-16-le"))  # no BOM: NULs
    for number in (1, 2, 3):
        c.expect(s, f"utf16le.jsonl:{number}", "bad_encoding", "NUL", "utf16le.jsonl")

    nested = Lines(folder / "sub" / "nested.jsonl")  # relative to its own folder
    nested.row(msg("g-nested", images=["pics/ok.png"]))
    nested.row(msg("g-nested-up", images=["../imgs/wide.png"]))
    nested.row(msg("b-nested-wrong-folder", images=["imgs/ok.png"]))
    nested.write()
    c.expect(s, "g-nested", None)
    c.expect(s, "g-nested-up", None)
    c.expect(s, "b-nested-wrong-folder", "missing_image", str(folder / "sub" / "imgs" / "ok.png"))

    array = [msg("g-array"), 3, "text", None, [msg("x")], msg("b-array", [answer()])]
    (folder / "array.json").write_text(json.dumps(array))
    c.expect(s, "g-array", None)
    for i, kind in [(1, "int"), (2, "str"), (3, "NoneType"), (4, "list")]:
        c.expect(s, f"array.json[{i}]", "bad_json", f"got {kind}")
    c.expect(s, "b-array", "bad_conversation", "turn 0")
    (folder / "misnamed.json").write_text(json.dumps(msg("m1")) + "\n" + json.dumps(msg("m2")))
    c.expect(s, "misnamed.json", "bad_json", "must be named .jsonl", "misnamed.json")

    rows = [msg("g-parquet"), msg("b-parquet-two", images=["imgs/ok.png", "imgs/wide.png"]),
            msg("b-parquet-missing", images=["imgs/nope.png"]),
            msg("b-parquet-order", [answer(), user()])]
    schema = pa.schema([("id", pa.string()), ("messages", TURNS),
                        ("images", pa.list_(pa.string()))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "rows.parquet")
    c.expect(s, "g-parquet", None)
    c.expect(s, "b-parquet-two", "multiple_images", "2 images")
    c.expect(s, "b-parquet-missing", "missing_image", str(folder / "imgs" / "nope.png"))
    c.expect(s, "b-parquet-order", "bad_conversation", "turn 0")

    hf = [{"id": "g-hf-bytes", "messages": [user(), answer()],
           "images": [{"bytes": png(20, 20, 3), "path": None}]},
          {"id": "g-hf-path", "messages": [user(), answer()],
           "images": [{"bytes": None, "path": "imgs/wide.png"}]},
          {"id": "b-hf-null", "messages": [user(), answer()],
           "images": [{"bytes": None, "path": None}]},
          {"id": "b-hf-corrupt", "messages": [user(), answer()],
           "images": [{"bytes": b"\x89PNG not really", "path": None}]}]
    hf_schema = pa.schema([("id", pa.string()), ("messages", TURNS),
                           ("images", pa.list_(HF_IMAGE))])
    pq.write_table(pa.Table.from_pylist(hf, schema=hf_schema), folder / "sub" / "hf.parquet")
    c.expect(s, "g-hf-bytes", None)
    c.expect(s, "b-hf-null", "missing_image", "images[0]")
    c.expect(s, "b-hf-corrupt", "corrupt_image", "images[0].bytes", "not an image format")
    # relative to the Parquet file's folder (sub/), where no imgs/ is: the path proves it
    c.expect(s, "g-hf-path", "missing_image", str(folder / "sub" / "imgs" / "wide.png"))

    wrong = pa.table({"id": ["b-wt-string", "b-wt-json"],
                      "messages": ["hello", json.dumps([user(), answer()])],
                      "images": [["imgs/ok.png"], ["imgs/ok.png"]]})
    pq.write_table(wrong, folder / "wrong_types.parquet")
    c.expect(s, "b-wt-string", "bad_messages", "'messages'", "str")
    c.expect(s, "b-wt-json", "bad_messages", "'messages'", "str")
    invalid = pa.array([b"fine", b"caf\xe9"], type=pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ["g-latin1-neighbour", "b-latin1"],
                             "messages": pa.array([[user(), answer()]] * 2, type=TURNS),
                             "images": [["imgs/ok.png"]] * 2, "note": invalid}),
                   folder / "invalid_utf8.parquet")
    c.expect(s, "g-latin1-neighbour", None)
    c.expect(s, "invalid_utf8.parquet:*", "bad_encoding", "['note']", "not UTF-8")


def write_messages_with_root(c: Corpus) -> Path:
    """`image_root` wins over the data file's folder."""
    path = c.root / "rooted" / "train.jsonl"
    write_images(path.parent / "imgs")
    lines = Lines(path)
    lines.row(msg("g-rooted", images=["wide.png"]))  # under image_root (elsewhere/)
    lines.row(msg("b-rooted", images=["imgs/ok.png"]))  # only next to the file
    lines.write()
    c.expect("rooted", "g-rooted", None)
    c.expect("rooted", "b-rooted", "missing_image", str(c.root / "elsewhere" / "imgs" / "ok.png"))
    return path


def write_llava(c: Corpus, folder: Path) -> None:
    write_images(folder / "coco")
    s = "llava"

    def conv(*turns):
        return [{"from": who, "value": text} for who, text in turns]

    good = conv(("human", "<image>\nWhat is it?"), ("gpt", "An orange square."))
    rows = [
        ({"id": "g-llava", "image": "coco/ok.png", "conversations": good}, None),
        ({"id": "g-llava-list", "image": ["coco/ok.png"], "conversations": good}, None),
        ({"id": "b-llava-two", "image": ["coco/ok.png", "coco/wide.png"], "conversations": good},
         ("multiple_images", "2 images")),
        ({"id": "b-llava-robot", "image": "coco/ok.png",
          "conversations": conv(("robot", "x"), ("gpt", "y"))}, ("bad_conversation", "robot")),
        ({"id": "b-llava-list-speaker", "image": "coco/ok.png",
          "conversations": [{"from": ["human"], "value": "q"}]}, ("bad_conversation", "turn 0")),
        ({"id": "b-llava-text-only", "conversations": good}, ("missing_image", "text-only")),
        ({"id": "b-llava-gpt-first", "image": "coco/ok.png",
          "conversations": conv(("gpt", "hi"), ("human", "<image>q"), ("gpt", "a"))},
         ("bad_conversation", "turn 0")),
        ({"id": "b-llava-url", "image": "https://x.org/coco/1.jpg", "conversations": good},
         ("remote_image", "https://x.org/coco/1.jpg")),
        ({"id": "b-llava-number", "image": 12, "conversations": good},
         ("bad_image_field", "image")),
        ({"id": "b-llava-turns-dict", "image": "coco/ok.png", "conversations": {"a": 1}},
         ("bad_messages", "'conversations'")),
        ({"id": "b-llava-tiny", "image": "coco/dot.png", "conversations": good},
         ("image_too_small", str(folder / "coco" / "dot.png"), "1x1")),
    ]
    (folder / "llava_instruct.json").write_text(json.dumps([r for r, _ in rows]))
    for row, outcome in rows:
        c.expect(s, row["id"], *(outcome or (None,)))
    more = Lines(folder / "more.jsonl")  # LLaVA rows as JSON lines, in the same folder
    more.row({"id": "g-llava-jsonl", "image": "coco/wide.png", "conversations": good})
    more.write()
    c.expect(s, "g-llava-jsonl", None)


def write_records(c: Corpus, path: Path) -> None:
    good = make_synthetic_records(3, seed=4)
    template = good[0]
    bad = [
        ({**template, "id": "b-rec-not-json", "messages": "not json"}, "bad_messages", "JSON"),
        ({**template, "id": "b-rec-punct", "target_text": "..."}, "empty_text", "target_text"),
        ({**template, "id": "b-rec-corrupt", "image": b"\x00" * 64}, "corrupt_image",
         "image (embedded bytes)"),
        ({**template, "id": "b-rec-no-image", "image": b""}, "missing_image", "image"),
        ({**template, "id": "b-rec-order",
          "messages": json.dumps([answer(), user()])}, "bad_conversation", "turn 0"),
        ({**template, "id": "b-rec-truncated", "image": noisy_jpeg()[:-60]}, "truncated_image",
         "embedded"),
    ]
    path.parent.mkdir(parents=True)
    rows = good + [r for r, *_ in bad]
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), path)
    for r in good:
        c.expect("records", r["id"], None)
    for row, reason, *needles in bad:
        c.expect("records", row["id"], reason, *needles)
    write_images(path.parent / "imgs")  # a second file, its columns typed otherwise
    messages = json.dumps([user(), answer()])
    pq.write_table(pa.table({
        "id": pa.array([7, 8, 9], type=pa.int64()),
        "image": ["imgs/ok.png", "imgs/ok.png", "/nowhere/x.png"],  # paths, not bytes
        "messages": [messages] * 3,
        "target_text": pa.array([None, 5, None], type=pa.int64()),
    }), path.parent / "typed_otherwise.parquet")
    c.expect("records", "7", None)
    c.expect("records", "8", "bad_messages", "target_text", "int")
    c.expect("records", "9", "missing_image", "/nowhere/x.png")


# ------------------------------------------------------------------------------ paper formats
def write_flickr30k(c: Corpus, folder: Path) -> Path:
    images = folder / "flickr30k-images"
    write_images(images)
    entries = [
        ("ok.png", "Two dogs run on the beach.", None),
        ("gone.jpg", "A caption of a missing image.", ("missing_image", str(images / "gone.jpg"))),
        ("ok.png", "   ", ("empty_text", "caption")),
        ("ok.png", 17, ("bad_messages", "caption", "int")),
        ("ok.png", "...", ("empty_text", "turn 1")),
        ("corrupt.png", "A corrupt file.", ("corrupt_image", str(images / "corrupt.png"))),
        ("http://x.org/1.jpg", "A URL.", ("remote_image", "http://x.org/1.jpg")),
    ]
    payload = []
    for i, (name, caption, outcome) in enumerate(entries):
        payload.append({"filename": name, "imgid": i, "split": "train",
                        "sentences": [{"raw": caption, "imgid": i, "sentid": i}]})
        c.expect("flickr", f"{name}#0", *(outcome or (None,)))
    payload.append("not an entry")
    c.expect("flickr", f"imgid{len(entries)}#0", "bad_json", f"images[{len(entries)}]")
    path = folder / "dataset_flickr30k.json"  # with a UTF-8 BOM, as Windows editors save it
    path.write_bytes(codecs.BOM_UTF8 + json.dumps({"images": payload}).encode())
    return images


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_laion(c: Corpus, folder: Path) -> None:
    folder.mkdir(parents=True)
    samples = [
        ("000000000", png(), b"a photo of a cat", None),
        ("000000001", png(), b"caf\xe9 au lait", ("bad_encoding", "txt", "not UTF-8")),
        ("000000002", None, b"no image member", ("missing_image", "no image member")),
        ("000000003", b"GIF89a broken", b"a broken gif", ("corrupt_image", "jpg (embedded")),
        ("000000004", png(3, 3), b"a tiny image", ("image_too_small", "3x3")),
        ("000000005", png(), b"...", ("empty_text", "turn 1")),
    ]
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key, image, caption, outcome in samples:
            if image is not None:
                _member(tar, f"{key}.jpg", image)
            _member(tar, f"{key}.txt", caption)
            c.expect("laion_tar", key, *(outcome or (None,)))
    rows = [{"key": "100", "jpg": png(), "txt": "a dog", "status": "success",
             "error_message": None},
            {"key": "101", "jpg": None, "txt": "never came", "status": "failed_to_download",
             "error_message": "HTTP 404"}]
    pq_folder = folder.parent / "laion_parquet"
    pq_folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), pq_folder / "00000.parquet")
    c.expect("laion_pq", "100", None)
    c.expect("laion_pq", "101", "missing_image", "failed_to_download", "HTTP 404")


def write_rlaif_v(c: Corpus, folder: Path) -> None:
    write_images(folder / "imgs")
    base = {"ds_name": "RLAIF-V", "image": {"bytes": png(), "path": None},
            "question": "What is it?", "chosen": "An orange square.", "rejected": "A dragon.",
            "image_path": None}
    rows = [
        ({**base, "idx": "0"}, None),
        ({**base, "idx": "1", "image": None, "image_path": "imgs/wide.png"}, None),
        ({**base, "idx": "2", "question": " "}, ("empty_question", "question")),
        ({**base, "idx": "3", "chosen": None}, ("empty_text", "chosen")),
        ({**base, "idx": "4", "image": None, "image_path": "imgs/gone.png"},
         ("missing_image", str(folder / "imgs" / "gone.png"))),
        ({**base, "idx": "5", "image": {"bytes": b"\xff\xd8\xff junk", "path": None}},
         ("corrupt_image", "image.bytes")),
        ({**base, "idx": "6", "image": {"bytes": png(400, 4), "path": None}},
         ("image_too_small", "400x4")),
    ]
    schema = pa.schema([("ds_name", pa.string()), ("image", HF_IMAGE), ("question", pa.string()),
                        ("chosen", pa.string()), ("rejected", pa.string()),
                        ("image_path", pa.string()), ("idx", pa.string())])
    pq.write_table(pa.Table.from_pylist([r for r, _ in rows], schema=schema),
                   folder / "RLAIF-V-Dataset_000.parquet")
    for row, outcome in rows:
        c.expect("rlaif", f"RLAIF-V/{row['idx']}", *(outcome or (None,)))


def write_ocrvqa(c: Corpus, folder: Path) -> None:
    folder.mkdir(parents=True)

    def row(texts, images=1):
        return {"images": [{"bytes": png(16 + k, 16), "path": None} for k in range(images)],
                "texts": [{"user": u, "assistant": a, "source": "ocrvqa"} for u, a in texts]}

    rows = [
        (row([("Who wrote it?", "Jane Austen."), ("Genre?", "Fiction")]), None),
        (row([("Who wrote it?", "X")], images=2), ("multiple_images", "2 images")),
        (row([("Who wrote it?", "")]), ("empty_text", "turn 0", "'assistant'")),
        (row([("Who wrote it?", "Y")], images=0), ("missing_image", "empty list")),
        (row([(None, "Z")]), ("empty_question", "turn 0", "'user'")),
    ]
    schema = pa.schema([("images", pa.list_(HF_IMAGE)), ("texts", pa.list_(pa.struct(
        [("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])))])
    table = pa.Table.from_pylist([r for r, _ in rows], schema=schema)
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    for read_back, (_, outcome) in zip(table.to_pylist(), rows):  # the id hashes the row
        c.expect("ocr", FORMATS["ocrvqa"].row_id(read_back, "ocr"), *(outcome or (None,)))


# ---------------------------------------------------------------------------------------- test
def outcomes(rows: list[dict], rejects: list[dict]) -> dict[str, list[tuple]]:
    by_source: dict[str, list[tuple]] = collections.defaultdict(list)
    for r in rows:
        by_source[r["source"]].append((r["id"], None, ""))
    for r in rejects:
        by_source[r["source"]].append((r["id"], r["reason"], r["detail"]))
    return by_source


def check(expected: list[tuple], got: list[tuple], source: str) -> None:
    """Every expected row once (duplicated ids as often as written), with its reason and its
    detail's needles; nothing else."""
    remaining, missing = list(got), []
    for rid, reason, needles in expected:
        match = [g for g in remaining if g[0] == rid or (rid.endswith(":*")
                                                           and g[0].startswith(rid[:-1]))]
        if not match:
            missing.append(rid)
            continue
        _, got_reason, detail = match[0]
        remaining.remove(match[0])
        assert got_reason == reason, f"{source}/{rid}: {got_reason} ({detail}), not {reason}"
        for needle in needles:
            assert needle in detail, f"{source}/{rid}: {needle!r} not in {detail!r}"
        assert "object at 0x" not in detail and "BytesIO" not in detail, detail
    assert not missing, f"{source}: neither a record nor a reject: {missing}"
    assert not remaining, f"{source}: unexpected rows {remaining}"


def read_and_check(c: Corpus, sources: list[dict], tmp_path: Path) -> list[dict]:
    """Read `sources` through Ray Data; check every source's rows against the corpus; the
    rejects."""
    cfg = load_config("demo", {"data.sources": sources, "data.max_text_chars": MAX_TEXT,
                               "data.read_num_cpus": 1.0})
    check_input_paths(cfg)  # the corpus's paths are all fine: only its rows are bad
    rejects_dir = str(tmp_path / "rejects")
    rows = read_sources(cfg, rejects_dir).take_all()
    rejects = read_rejects(rejects_dir).to_pylist()
    got = outcomes(rows, rejects)
    assert set(got) == {s["name"] for s in sources}
    for source in sources:
        check(c.expected[source["name"]], got[source["name"]], source["name"])
    assert "convert_error" not in {r["reason"] for r in rejects}
    return rejects


def test_every_row_of_the_user_formats_is_trained_or_rejected_by_name(ray_local, tmp_path):
    """messages (JSONL, JSON, Parquet; a folder of them), LLaVA (JSON, JSONL), records."""
    c = Corpus(tmp_path)
    write_messages(c, tmp_path / "msgs")
    rooted = write_messages_with_root(c)
    write_llava(c, tmp_path / "llava")
    write_records(c, tmp_path / "records" / "records.parquet")
    rejects = read_and_check(c, [
        {"name": "msgs", "format": "messages", "path": str(tmp_path / "msgs")},
        {"name": "rooted", "format": "messages", "path": str(rooted),
         "image_root": str(tmp_path / "elsewhere")},
        {"name": "llava", "format": "llava", "path": f"file://{tmp_path}/llava"},
        {"name": "records", "format": "records", "path": str(tmp_path / "records")},
    ], tmp_path)
    summary = summarise_rejects(str(tmp_path / "rejects"))
    assert summary.startswith(f"rejects: {len(rejects)}")
    assert "read/bad_conversation" in summary and "\n    msgs/" in summary


def test_every_row_of_the_paper_formats_is_trained_or_rejected_by_name(ray_local, tmp_path):
    """Flickr30k (Karpathy JSON with a BOM), LAION (tar shards, Parquet), RLAIF-V, OCR-VQA."""
    c = Corpus(tmp_path)
    flickr_images = write_flickr30k(c, tmp_path / "flickr")
    write_laion(c, tmp_path / "laion_tar")
    write_rlaif_v(c, tmp_path / "rlaif")
    write_ocrvqa(c, tmp_path / "ocr")
    read_and_check(c, [
        {"name": "flickr", "format": "flickr30k", "path": str(tmp_path / "flickr"),
         "image_root": str(flickr_images)},
        {"name": "laion_tar", "format": "laion", "path": str(tmp_path / "laion_tar")},
        {"name": "laion_pq", "format": "laion", "path": str(tmp_path / "laion_parquet")},
        {"name": "rlaif", "format": "rlaif_v", "path": str(tmp_path / "rlaif")},
        {"name": "ocr", "format": "ocrvqa", "path": str(tmp_path / "ocr")},
    ], tmp_path)


# ---------------------------------------------------------------------------------- benchmarks
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_every_benchmark_row_in_every_format_is_read_or_rejected_by_name(ray_local, tmp_path):
    write_images(tmp_path / "imgs")
    header = ["index", "question", "A", "B", "answer", "category", "image", "image_path"]
    tsv_rows = [
        ["0", "Which colour?", "red", "orange", "B", "color", b64(png()), ""],
        ["1", "Same image as row 0", "x", "y", "A", "ref", "0", ""],
        ["2", "Image from a path", "x", "y", "A", "path", "", "imgs/wide.png"],
        ["3", "Tiny", "x", "y", "A", "c", b64(png(1, 1)), ""],
        ["4", "Remote", "x", "y", "A", "c", "", "https://x.org/a.png"],
        ["5", "Bad base64", "x", "y", "A", "c", "%%%" * 30, ""],
        ["7", "Strip", "x", "y", "A", "c", b64(png(8, 8 * int(MAX_ASPECT_RATIO) + 8)), ""],
    ]
    lines = ["\t".join(header)] + ["\t".join(r) for r in tsv_rows]
    lines.insert(4, "6\tonly three\tfields")  # a ragged line
    data = ("\n".join(lines) + "\n").encode()
    data = data.replace(b"Bad base64", b"Bad b\xe4se64")  # row 5: Latin-1 inside UTF-8
    (tmp_path / "MMB.tsv").write_bytes(data)
    expected_tsv = {"0": None, "1": None, "2": None, "3": ("image_too_small", "1x1"),
                    "4": ("remote_image", "https://x.org/a.png"),
                    "5": ("bad_encoding", "question"), "MMB.tsv:5": ("bad_row", "3 fields"),
                    "7": ("extreme_aspect_ratio", "8x")}

    jsonl = Lines(tmp_path / "bench.jsonl")
    jsonl.row({"id": "j0", "question": "Line\u2028separator?", "answers": ["yes"],
               "image": b64(png())})
    at_latin = jsonl.add(b'{"id": "j1", "question": "caf\xe9", "answer": "x"}')
    at_list = jsonl.add("[1, 2]")
    jsonl.row({"id": "j3", "question": "q", "answer": "a", "image": {"bytes": "not bytes"}})
    jsonl.write(head=codecs.BOM_UTF8)
    expected_jsonl = {"j0": None, at_latin: ("bad_encoding", "not UTF-8"),
                      at_list: ("bad_json", "got list"),
                      "j3": ("bad_image_field", "image")}

    pq.write_table(pa.Table.from_pylist([
        {"index": 0, "question": "q", "answer": "A", "image": png()},
        {"index": 1, "question": "q", "answer": "A", "image": b"\x89PNG\r\n\x1a\n broken"},
        {"index": 2, "question": "q", "answer": "A", "image": b""},
    ]), tmp_path / "bench.parquet")
    expected_parquet = {"0": None, "1": ("corrupt_image", "image (embedded bytes)"),
                        "2": ("missing_image", "image is empty")}

    rejects_dir = str(tmp_path / "rejects")
    datasets = [read_benchmark(str(tmp_path / "MMB.tsv"), "mmb", rejects_dir),
                read_benchmark(f"file://{tmp_path}/bench.jsonl", "jsonl", rejects_dir),
                read_benchmark(str(tmp_path / "bench.parquet"), "parquet", rejects_dir)]
    rows = datasets[0].union(*datasets[1:]).take_all()
    rejects = read_rejects(rejects_dir).to_pylist()
    by_name = {"mmb": expected_tsv, "jsonl": expected_jsonl, "parquet": expected_parquet}
    read_ids = collections.Counter(r["id"] for r in rows)
    for name, expected in by_name.items():
        got = [(r["id"], r["reason"], r["detail"]) for r in rejects if r["source"] == name]
        want = [(rid, *outcome[:1], outcome[1:]) for rid, outcome in expected.items() if outcome]
        goods = [rid for rid, outcome in expected.items() if outcome is None]
        check([(rid, reason, needles) for rid, reason, needles in want], got, name)
        assert all(read_ids[rid] >= 1 for rid in goods), (name, read_ids)
    assert sum(read_ids.values()) == sum(
        1 for e in by_name.values() for o in e.values() if o is None)
    assert "convert_error" not in {r["reason"] for r in rejects}
    two = next(r for r in rows if r["question"] == "Image from a path")
    assert two["image"] == (tmp_path / "imgs" / "wide.png").read_bytes()  # next to the file


@pytest.mark.parametrize("first", [1, 3])
def test_summary_lists_counts_and_the_first_ids_per_reason(tmp_path, first):
    from lavender_ray.rejects import write_rejects
    from lavender_ray.schema import Reject

    assert summarise_rejects(str(tmp_path / "none")) == f"rejects: none  [{tmp_path}/none]"
    rejects = [Reject(f"r{i}", "msgs", "read", "missing_image", f"/data/imgs/{i}.png: no such "
                      f"file {'x' * 200}") for i in range(4)]
    rejects.append(Reject("bad\ud800id", "msgs", "read", "bad_json", "line\nbreak"))
    write_rejects(rejects, str(tmp_path / "rej"), "read")
    lines = summarise_rejects(str(tmp_path / "rej"), first=first).splitlines()
    assert lines[0] == f"rejects: 5  [{tmp_path}/rej]"
    assert lines[1] == "  read/missing_image  4"
    assert len(lines) == 2 + first + 1 + 1
    assert all(len(line) < 160 for line in lines)
    assert lines[2].startswith("    msgs/r") and "/data/imgs/" in lines[2]
    assert lines[-1] == "    msgs/bad\\ud800id: line break"
    # the one-line form (tune's shared targets, the demo): sorted, never a Python dict
    counts = count_rejects(str(tmp_path / "rej"))
    assert format_counts(counts) == "read/bad_json 1, read/missing_image 4"
    assert format_counts({}) == "none"


def test_a_record_rejected_in_every_epoch_counts_once(tmp_path):
    """A second epoch (or a stream restarted after a worker failure) reads the same records and
    writes their rejects again: the count, the summary and the rows are per record."""
    from lavender_ray.rejects import write_rejects
    from lavender_ray.schema import Reject

    missing = Reject("m1", "mine", "read", "missing_image", "/data/m1.png: no such file")
    broken = Reject("l1", "llava", "read", "corrupt_image", "not an image format PIL reads")
    for _ in range(2):  # two epochs, each its own file
        write_rejects([missing, broken], str(tmp_path / "rej"), "read")
    assert len(list((tmp_path / "rej").glob("*.parquet"))) == 2
    assert count_rejects(str(tmp_path / "rej")) == {"read/missing_image": 1,
                                                    "read/corrupt_image": 1}
    assert [r["id"] for r in read_rejects(str(tmp_path / "rej")).to_pylist()] in (
        ["m1", "l1"], ["l1", "m1"])
    lines = summarise_rejects(str(tmp_path / "rej")).splitlines()
    assert lines[0] == f"rejects: 2  [{tmp_path}/rej]"
    assert "  read/missing_image  1" in lines and "  read/corrupt_image  1" in lines
