"""Synthetic data set, format converters and Ray Data readers with good and bad records."""

from __future__ import annotations

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lavender_ray.config import load_config
from lavender_ray.data.formats import llava_row, messages_row
from lavender_ray.data.image_refs import ImageLoader
from lavender_ray.data.synthetic import (
    ASPECT_RATIOS,
    COLORS,
    make_synthetic_records,
    sample_scene,
    shape_boxes,
    vqa_pair,
)
from lavender_ray.pipeline.read import read_sources
from lavender_ray.rejects import count_rejects, read_rejects, write_rejects
from lavender_ray.schema import RECORD_SCHEMA, RecordError, parse_messages


def test_synthetic_is_deterministic_and_names_what_is_drawn():
    a, b = make_synthetic_records(6, seed=3), make_synthetic_records(6, seed=3)
    assert a == b
    assert make_synthetic_records(6, seed=4) != a
    caption = a[0]
    words = caption["target_text"].lower().rstrip(".").split()
    assert {"circle", "square", "triangle"} & set(words)
    image = Image.open(io.BytesIO(caption["image"]))
    assert image.size == (96, 96) and image.mode == "RGB"
    # the first named colour is really drawn
    first_color = words[1]
    assert COLORS[first_color] in {c for _, c in image.getcolors(96 * 96)}
    assert parse_messages(a[1]["messages"])[1]["role"] == "assistant"
    pa.Table.from_pylist(a, schema=RECORD_SCHEMA)  # fits the schema


def test_synthetic_images_come_in_every_aspect_ratio_with_shapes_where_they_are_said():
    """1:4 to 4:1, the long side `image_size`; each named shape is drawn inside its box, and the
    box is on the side of the image its relation says."""
    records = make_synthetic_records(len(ASPECT_RATIOS), seed=5, image_size=96)
    rng = random.Random(5)
    for i, record in enumerate(records):
        scene = sample_scene(rng)
        if i % 2:
            vqa_pair(scene, rng)  # the VQA draws take the same random numbers as the records'
        image = Image.open(io.BytesIO(record["image"])).convert("RGB")
        width, height = image.size
        w, h = ASPECT_RATIOS[i]
        assert max(image.size) == 96 and abs(width / height - w / h) < 0.05
        first, second = shape_boxes(scene, width, height)
        for (color, _), (x0, y0, x1, y1) in zip((scene.first, scene.second), (first, second)):
            centre = image.getpixel((int((x0 + x1) / 2), int((y0 + y1) / 2)))
            assert centre == COLORS[color], (i, color, centre)
        (fx, fy), (sx, sy) = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (first, second)]
        expected = {"to the left of": fx < sx, "to the right of": fx > sx,
                    "above": fy < sy, "below": fy > sy}
        assert expected[scene.relation], (i, scene.relation, first, second)


def test_synthetic_parquet_reads_back_as_records(tmp_path):
    from lavender_ray.data.synthetic import write_synthetic_parquet

    path = write_synthetic_parquet(str(tmp_path / "synthetic.parquet"), 4, seed=2)
    table = pq.read_table(path)
    assert table.schema.equals(RECORD_SCHEMA)
    assert table.to_pylist() == make_synthetic_records(4, seed=2)


def _png(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_messages_converter_handles_parts_placeholders_and_bytes():
    row = {"id": "m1", "images": [{"bytes": _png(), "path": None}],
           "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                        {"role": "assistant", "content": "<image>A red square."}]}
    rec = messages_row(row, source="s", images=ImageLoader(), max_text_chars=100)
    assert rec["target_text"] == "A red square."
    assert parse_messages(rec["messages"])[0]["content"] == "What?"


Q, A = {"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"id": "x", "messages": [], "images": ["a.png"]}, "bad_messages"),
        ({"id": "x", "messages": [{"role": "user", "content": "q"}], "images": ["a.png"]},
         "bad_conversation"),
        ({"id": "x", "messages": [{"role": "bot", "content": "q"}], "images": ["a.png"]},
         "bad_conversation"),
        ({"id": "x", "messages": [Q, {"role": "assistant", "content": "   "}], "images": ["a.png"]},
         "empty_text"),
        ({"id": "x", "messages": [Q, A]}, "missing_image"),
        ({"id": "x", "messages": [Q, A], "images": ["nope.png"]}, "missing_image"),
        ({"id": "x", "messages": [Q, A], "images": ["a", "b"]}, "multiple_images"),
        ({"id": "x", "messages": [Q, {"role": "assistant", "content": "w" * 200}],
          "images": [b"x"]}, "text_too_long"),
    ],
)
def test_messages_converter_rejects_with_reason(row, reason, tmp_path):
    with pytest.raises(RecordError) as err:
        messages_row(row, source="s", images=ImageLoader(root=str(tmp_path)), max_text_chars=100)
    assert err.value.reason == reason


def test_llava_converter(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png())
    row = {"id": "l1", "image": "img/a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}
    rec = llava_row(row, source="llava", images=ImageLoader(root=str(tmp_path)),
                    max_text_chars=100)
    assert parse_messages(rec["messages"]) == [
        {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Red."}]
    with pytest.raises(RecordError, match="speaker"):
        llava_row({**row, "conversations": [{"from": "robot", "value": "x"}]}, source="llava",
                  images=ImageLoader(root=str(tmp_path)), max_text_chars=100)
    # a row of the other chat format (the source's `format` is wrong): the reject says which
    with pytest.raises(RecordError, match="it has 'conversations': format llava\\?$"):
        messages_row(row, source="s", images=ImageLoader(root=str(tmp_path)), max_text_chars=100)
    messages = {"id": "m1", "images": ["img/a.png"], "messages": [
        {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Red."}]}
    with pytest.raises(RecordError, match="it has 'messages': format messages\\?$"):
        llava_row(messages, source="llava", images=ImageLoader(root=str(tmp_path)),
                  max_text_chars=100)


def _write_fixtures(root):
    """A messages JSONL, a LLaVA JSON array and a records Parquet, each with good and bad rows."""
    (root / "images").mkdir()
    (root / "images" / "ok.png").write_bytes(_png())
    good_msg = {"id": "g1", "images": ["ok.png"], "messages": [
        {"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "A red square."}]}
    lines = [
        json.dumps(good_msg),
        json.dumps({**good_msg, "id": "g2"}),
        json.dumps({**good_msg, "id": "b-missing", "images": ["gone.png"]}),
        json.dumps({**good_msg, "id": "b-empty", "messages": [
            {"role": "user", "content": "<image>"}, {"role": "assistant", "content": ""}]}),
        "{not json",
    ]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    llava = [
        {"id": "l1", "image": "ok.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "l-textonly", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
    ]
    (root / "llava.json").write_text(json.dumps(llava))
    records = make_synthetic_records(3, seed=1)
    records.append({**records[0], "id": "r-noimage", "image": b""})
    pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), root / "records.parquet")


def test_readers_through_ray_data_count_every_row(ray_local, tmp_path):
    _write_fixtures(tmp_path)
    images = str(tmp_path / "images")
    sources = [
        {"name": "msgs", "format": "messages", "path": str(tmp_path / "train.jsonl"), "image_root": images},
        {"name": "llava", "format": "llava", "path": str(tmp_path / "llava.json"), "image_root": images},
        {"name": "recs", "format": "records", "path": str(tmp_path / "records.parquet")},
        {"name": "synthetic", "format": "synthetic", "num_samples": 5},
    ]
    cfg = load_config("demo", {"data.sources": sources})
    rejects_dir = str(tmp_path / "rejects")
    rows = read_sources(cfg, rejects_dir).take_all()
    ids = sorted(r["id"] for r in rows)
    assert "g1" in ids and "g2" in ids and "l1" in ids
    assert len(rows) == 2 + 1 + 3 + 5
    assert count_rejects(rejects_dir) == {
        "read/missing_image": 3, "read/empty_text": 1, "read/bad_json": 1}
    rejected = {r["id"] for r in read_rejects(rejects_dir).to_pylist()}
    assert {"b-missing", "b-empty", "l-textonly", "r-noimage"} <= rejected
    total_in = 5 + 2 + 4 + 5
    assert len(rows) + sum(count_rejects(rejects_dir).values()) == total_in


def test_reader_reads_a_filesystem_uri(ray_local, tmp_path):
    _write_fixtures(tmp_path)
    uri = f"file://{tmp_path}/train.jsonl"
    cfg = load_config("demo", {"data.sources": [
        {"name": "msgs", "format": "messages", "path": uri, "image_root": f"file://{tmp_path}/images"}]})
    rows = read_sources(cfg, str(tmp_path / "rejects")).take_all()
    assert sorted(r["id"] for r in rows) == ["g1", "g2"]


def test_rejects_round_trip_and_a_read_without_a_rejects_folder(tmp_path):
    from lavender_ray.schema import Reject

    rejects = [Reject("r1", "s", "read", "missing_image", "a.jpg")]
    assert write_rejects(rejects, None, "read") is None  # the cache's key scan writes nothing
    assert write_rejects([], str(tmp_path / "rej"), "read") is None
    assert not (tmp_path / "rej").exists()
    assert write_rejects(rejects, str(tmp_path / "rej"), "read") is not None
    assert count_rejects(str(tmp_path / "rej")) == {"read/missing_image": 1}


# ------------------------------------------------------------------------------- path checks
def test_source_paths_are_checked_before_ray_starts_with_one_line_naming_key_and_path(tmp_path):
    from lavender_ray.config import ConfigError
    from lavender_ray.data.checks import check_input_paths

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 but not really")
    (tmp_path / "fake.tar").write_bytes(b"not a tar" * 100)
    (tmp_path / "imgs.png").write_bytes(_png())

    def config(**source):
        return load_config("demo", {"data.sources": [{"name": "train", **source}]})

    check_input_paths(config(format="messages", path=str(tmp_path / "data")))
    check_input_paths(config(format="messages", path=f"file://{tmp_path}/data/train.jsonl"))
    check_input_paths(load_config("demo"))  # synthetic sources have no path
    cases = [
        (dict(format="messages", path=str(tmp_path / "gone.jsonl")),
         f"data.sources[train].path='{tmp_path}/gone.jsonl' does not exist"),
        (dict(format="messages", path=str(tmp_path / "notes.csv")),
         f"data.sources[train].path='{tmp_path}/notes.csv' is not a .jsonl/.json/.parquet file"),
        (dict(format="rlaif_v", path=str(tmp_path / "data")),
         f"data.sources[train].path='{tmp_path}/data' holds no .parquet file"),
        (dict(format="records", path=str(tmp_path / "empty.parquet")),
         "empty.parquet is an empty file (0 bytes)"),
        (dict(format="records", path=str(tmp_path / "fake.parquet")),
         "fake.parquet is not a Parquet file"),
        (dict(format="laion", path=str(tmp_path / "fake.tar")), "fake.tar is not a tar archive"),
        (dict(format="messages", path=str(tmp_path / "data"), image_root=str(tmp_path / "no")),
         f"data.sources[train].image_root='{tmp_path}/no' does not exist"),
        (dict(format="messages", path=str(tmp_path / "data"),
              image_root=str(tmp_path / "imgs.png")),
         f"data.sources[train].image_root='{tmp_path}/imgs.png' is not a folder"),
    ]
    for source, message in cases:
        with pytest.raises(ConfigError) as err:
            check_input_paths(config(**source))
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_model_id_naming_a_folder_must_hold_that_model(tmp_path, monkeypatch):
    """A local model folder without its model's file, or a path that is not there, is one line
    before Ray starts (it failed in every train worker after ~40 s, as two tracebacks)."""
    from lavender_ray.config import ConfigError
    from lavender_ray.data.checks import check_input_paths

    (tmp_path / "pics").mkdir()
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text("{}")
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config("demo", ["vlm.model_id=~/llava"]).vlm.model_id == f"{tmp_path}/llava"
    fine = [["vlm.model_id=org/some-vlm"], ["sd.model_id=CompVis/stable-diffusion-v1-4"],
            [f"vlm.model_id={tmp_path}/llava"], ["vlm.model_id=./llava", "sd.model_id=sd"]]
    for overrides in fine:  # Hub ids, tiny ids (the demo's) and saved models
        check_input_paths(load_config("demo", overrides))
    cases = {
        "vlm.model_id=pics": f"vlm.model_id='{tmp_path}/pics' is a folder without config.json: "
                             "not a saved transformers model",
        "sd.model_id=llava": f"sd.model_id='{tmp_path}/llava' is a folder without "
                             "model_index.json: not a saved diffusers pipeline",
        "vlm.model_id=./nowhere": "vlm.model_id='./nowhere': no such folder",
        "sd.model_id=/nowhere/sd": "sd.model_id='/nowhere/sd': no such folder",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as err:
            check_input_paths(load_config("demo", [override]))
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


# ----------------------------------------------------------------------- reading, pure parts
def test_jsonl_lines_split_on_newlines_only_and_decode_one_by_one():
    from lavender_ray.data.readers import READER_REJECT, ROW_AT, jsonl_rows

    data = ('{"a": "x\u2028y\u0085z\u000cw"}\r\n\r\n' '{"b": 1}\n').encode()
    data = b"\xef\xbb\xbf" + data + b'{"c": "caf\xe9"}\n' + b"\n"
    rows = jsonl_rows({"bytes": data, "path": "/d/x.jsonl"})
    assert [r[ROW_AT] for r in rows] == ["x.jsonl:1", "x.jsonl:3", "x.jsonl:4"]
    assert json.loads(rows[0]["text"], strict=False) == {"a": "x\u2028y\u0085z\u000cw"}
    assert rows[2][READER_REJECT].startswith("bad_encoding: /d/x.jsonl line 4 is not UTF-8")
    utf16 = jsonl_rows({"bytes": '{"a": 1}\n{"b": 2}\n'.encode("utf-16"), "path": "u.jsonl"})
    assert [json.loads(r["text"]) for r in utf16] == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize(
    "roles, reason, where",
    [(["user", "assistant"], None, ""),
     (["system", "user", "assistant", "user", "assistant"], None, ""),
     (["assistant", "user", "assistant"], "bad_conversation", "turn 0"),
     (["system", "assistant"], "bad_conversation", "turn 1"),
     (["system"], "bad_conversation", "only a system turn"),
     (["user"], "bad_conversation", "turn 0"),
     (["user", "assistant", "user"], "bad_conversation", "turn 2"),
     (["user", "system", "assistant"], "bad_conversation", "turn 1"),
     (["user", "user", "assistant"], "bad_conversation", "turns 0 and 1"),
     (["user", "assistant", "assistant"], "bad_conversation", "turns 1 and 2"),
     (["user", "function", "assistant"], "bad_conversation", "turn 1")],
)
def test_conversations_follow_what_the_chat_templates_render(roles, reason, where):
    from lavender_ray.schema import check_messages

    messages = [{"role": r, "content": f"text {i}"} for i, r in enumerate(roles)]
    if reason is None:
        check_messages(messages)
        return
    with pytest.raises(RecordError) as err:
        check_messages(messages)
    assert (err.value.reason, where in err.value.detail) == (reason, True), err.value.detail


def test_image_references_resolve_against_the_data_files_folder_unless_image_root(tmp_path):
    from lavender_ray.data.formats import ImageLoader

    (tmp_path / "a" / "imgs").mkdir(parents=True)
    (tmp_path / "a" / "imgs" / "x.png").write_bytes(_png())
    here = ImageLoader(root=str(tmp_path / "a"))
    assert here("imgs/x.png", "images[0]") == _png()
    assert here("./imgs/../imgs/x.png", "images[0]") == _png()
    assert here(str(tmp_path / "a" / "imgs" / "x.png"), "images[0]") == _png()
    assert ImageLoader(root=f"file://{tmp_path}/a")("imgs/x.png", "image") == _png()
    with pytest.raises(RecordError, match=f"{tmp_path}/b/imgs/x.png: no such file"):
        ImageLoader(root=str(tmp_path / "b"))("imgs/x.png", "images[0]")
    with pytest.raises(RecordError) as err:
        here("https://example.com/x.png", "images[0]")
    assert err.value.reason == "remote_image" and "https://example.com/x.png" in err.value.detail
