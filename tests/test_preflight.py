"""A source whose first rows are all rejected is refused before Ray starts (`pipeline.preflight`),
and the rows it samples are the readers' first rows."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lavender_ray.config import ConfigError, load_config
from lavender_ray.data.readers import DATA_FILE, json_array_rows, jsonl_rows
from lavender_ray.pipeline import preflight
from lavender_ray.pipeline.preflight import check_first_rows, check_sources, first_raw_rows

LOCAL = pafs.LocalFileSystem()


def user_folder(root, rows: int = 5) -> None:
    """pics/ with `rows` PNGs of several shapes and m.jsonl, messages rows naming them."""
    (root / "pics").mkdir()
    lines = []
    for i in range(rows):
        Image.new("RGB", (40 + 30 * i, 90 - 10 * i), (200, 40, 40)).save(root / f"pics/p{i}.png")
        lines.append(json.dumps({"id": f"r{i}", "images": [f"pics/p{i}.png"], "messages": [
            {"role": "user", "content": "<image>Describe."},
            {"role": "assistant", "content": f"A red box number {i}."}]}))
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")


def sources(*entries: dict):
    return load_config("demo", {"data.sources": list(entries)})


def test_a_source_whose_first_rows_are_all_rejected_is_refused_naming_reasons_and_first(tmp_path):
    user_folder(tmp_path)
    good = {"name": "good", "format": "messages", "path": str(tmp_path / "m.jsonl")}
    check_sources(sources(good))  # passes, and so does a source with one usable row:
    (tmp_path / "mixed.jsonl").write_text(
        "not json\n" + (tmp_path / "m.jsonl").read_text().splitlines()[0] + "\n")
    check_first_rows(sources({**good, "name": "mixed", "path": str(tmp_path / "mixed.jsonl")}))

    # the wrong format: every row is a messages row read as LLaVA
    wrong = {"name": "web", "format": "llava", "path": str(tmp_path / "m.jsonl")}
    with pytest.raises(ConfigError) as err:
        check_sources(sources(good, wrong))
    assert str(err.value) == (
        "data.sources[web]: its first 5 rows (in m.jsonl) are all rejected, so it would add "
        "nothing to the run: read/bad_messages 5; the first, r0: 'conversations' must be a "
        "non-empty list, got NoneType None; it has 'messages': format messages? (`lavender data "
        "inspect` with the same preset lists every reject)")

    # the images are elsewhere: relative paths resolve against the data file's folder
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.jsonl").write_text((tmp_path / "m.jsonl").read_text())
    moved = {"name": "moved", "format": "messages", "path": str(tmp_path / "sub" / "m.jsonl")}
    with pytest.raises(ConfigError, match=re.escape(
            "its first 5 rows (in m.jsonl) are all rejected, so it would add nothing to the run: "
            "read/missing_image 5 (relative image paths resolve against the data file's folder, "
            f"or data.sources[moved].image_root when set); the first, r0: {tmp_path}/sub/pics/"
            "p0.png: no such file")):
        check_sources(sources(moved))
    check_first_rows(sources({**moved, "image_root": str(tmp_path)}))  # the fix passes
    with pytest.raises(ConfigError, match=re.escape(
            "read/missing_image 5 (relative image paths resolve against "
            "data.sources[moved].image_root)")):
        check_first_rows(sources({**moved, "image_root": str(tmp_path / "sub")}))

    # only the first rows count: a source whose bad rows come after them passes
    text = (tmp_path / "m.jsonl").read_text()
    (tmp_path / "late.jsonl").write_text(text + "not json\n" * 50)
    check_first_rows(sources({**good, "path": str(tmp_path / "late.jsonl")}))
    (tmp_path / "early.jsonl").write_text("not json\n" * 40 + text)
    with pytest.raises(ConfigError, match=r"its first 32 rows \(in early.jsonl\) .* read/bad_json "
                                          r"32; the first, early.jsonl:1: JSONDecodeError"):
        check_first_rows(sources({**good, "path": str(tmp_path / "early.jsonl")}))


def test_a_parquet_source_is_sampled_from_its_first_rows(tmp_path):
    user_folder(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    table = pa.Table.from_pylist([{**r, "path": "not data: Ray's include_paths column"}
                                  for r in rows])
    pq.write_table(table, tmp_path / "m.parquet")
    got = first_raw_rows(LOCAL, str(tmp_path / "m.parquet"), 3)
    assert [r["id"] for r in got] == ["r0", "r1", "r2"]
    assert all(r[DATA_FILE] == str(tmp_path / "m.parquet") and "path" not in r for r in got)
    source = {"name": "pq", "format": "messages", "path": str(tmp_path / "m.parquet")}
    check_first_rows(sources(source))
    with pytest.raises(ConfigError, match=r"data.sources\[pq\]: its first 5 rows \(in "
                                          r"m.parquet\) are all rejected.*read/bad_messages 5"):
        check_first_rows(sources({**source, "format": "llava"}))


def test_the_sampled_rows_are_the_readers_first_rows_within_the_prefix(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "PREFIX_BYTES", 300)
    entries = [{"id": f"e{i}", "text": "x" * (i * 7)} for i in range(40)]
    lines = [json.dumps(e) for e in entries]
    lines[2] = "\t"  # blank
    lines[4] = '{"id": "bad utf8 \xff"}'
    data = "\r\n".join(lines).encode("utf-8").replace(b"\xc3\xbf", b"\xff") + b"\n"
    (tmp_path / "a.jsonl").write_bytes(data)
    got = first_raw_rows(LOCAL, str(tmp_path / "a.jsonl"), 32)
    whole = jsonl_rows({"bytes": data, "path": str(tmp_path / "a.jsonl")})
    assert 3 <= len(got) < len(whole) and got == whole[: len(got)]  # whole lines only

    array = json.dumps(entries, indent=1).encode()
    (tmp_path / "a.json").write_bytes(array)
    got = first_raw_rows(LOCAL, str(tmp_path / "a.json"), 32)
    whole = json_array_rows({"bytes": array, "path": str(tmp_path / "a.json")})
    assert 3 <= len(got) < len(whole) and got == whole[: len(got)]  # whole entries only
    assert first_raw_rows(LOCAL, str(tmp_path / "a.json"), 2) == whole[:2]

    # UTF-16 decodes as a whole: past the prefix it is not sampled; an object is not an array
    (tmp_path / "u.jsonl").write_bytes("\n".join(lines).encode("utf-16"))
    assert first_raw_rows(LOCAL, str(tmp_path / "u.jsonl"), 32) == []
    (tmp_path / "o.json").write_bytes(json.dumps({"rows": entries}).encode())
    assert first_raw_rows(LOCAL, str(tmp_path / "o.json"), 32) == []
    # within the prefix a file is read as the readers read it: not JSON is one bad_json row
    (tmp_path / "small.json").write_text('{"a": 1}\n{"a": 2}\n')
    [row] = first_raw_rows(LOCAL, str(tmp_path / "small.json"), 32)
    reject = row["__reject__"]
    assert reject.startswith("bad_json: ") and "must be named .jsonl" in reject
