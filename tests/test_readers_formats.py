"""Pure pieces of the paper's readers, without Ray: the Karpathy JSON unpacking, the converters
of each format, the sampling hash and the config validation of the new source options."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from lavender_ray.config import ConfigError, load_config
from lavender_ray.data.checks import list_files
from lavender_ray.data.formats import (
    CAPTION_PROMPT,
    FORMATS,
    laion_row,
    ocrvqa_row,
    rlaif_v_row,
)
from lavender_ray.data.image_refs import ImageLoader
from lavender_ray.data.mixture import keep_record, source_fraction
from lavender_ray.data.readers import READER_REJECT, flickr30k_rows
from lavender_ray.pipeline.read import read_laion
from lavender_ray.schema import RecordError, parse_messages

KW = {"images": ImageLoader(), "max_text_chars": 500}


def png(shade: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (shade, 90, 30)).save(buf, format="PNG")
    return buf.getvalue()


def karpathy(entries: list) -> dict:
    return {"bytes": json.dumps({"images": entries, "dataset": "flickr30k"}).encode(),
            "path": "dataset_flickr30k.json"}


def entry(i: int, split: str) -> dict:
    return {"filename": f"{i}.jpg", "imgid": i, "split": split,
            "sentences": [{"raw": f"caption {i}.{k}", "tokens": []} for k in range(5)]}


def test_karpathy_json_gives_one_row_per_caption_of_the_selected_splits():
    file_row = karpathy([entry(0, "train"), entry(1, "val"), entry(2, "test"), 7])
    rows = flickr30k_rows(file_row, ["train", "test"], "all")
    ids = [FORMATS["flickr30k"].row_id(r, "f") for r in rows]
    assert ids == [f"0.jpg#{k}" for k in range(5)] + [f"2.jpg#{k}" for k in range(5)] + ["imgid3#0"]
    assert rows[3]["caption"] == "caption 0.3" and rows[3][READER_REJECT] is None
    assert rows[-1][READER_REJECT].startswith("bad_json: images[3]")
    first = flickr30k_rows(file_row, None, "first")
    assert [r["caption"] for r in first[:3]] == ["caption 0.0", "caption 1.0", "caption 2.0"]
    assert len({tuple(sorted(r)) for r in rows + first}) == 1  # one column set for Ray blocks


def test_unreadable_karpathy_file_becomes_one_reject_row():
    rows = flickr30k_rows({"bytes": b"{not json", "path": "x.json"}, None, "all")
    assert len(rows) == 1 and rows[0][READER_REJECT].startswith("bad_json: x.json")
    rows = flickr30k_rows({"bytes": b'{"annotations": []}', "path": "coco.json"}, None, "all")
    assert rows[0][READER_REJECT].startswith("bad_json: coco.json is not Karpathy's JSON")


def test_file_listing_names_the_path_and_what_was_looked_for(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    (tmp_path / "00000.parquet").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "00001.tar").write_bytes(b"")
    _, files = list_files(str(tmp_path), (".tar",))
    assert files == [f"{tmp_path}/00000.tar", f"{tmp_path}/sub/00001.tar"]
    with pytest.raises(FileNotFoundError, match=r"holds no \.json file"):
        list_files(f"file://{tmp_path}", (".json",))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_files(str(tmp_path / "nope"), (".tar",))
    empty = load_config("demo", {"data.sources": [
        {"name": "laion", "format": "laion", "path": str(tmp_path / "sub" / "00001.tar.gz")}]})
    with pytest.raises(FileNotFoundError, match=r"no img2dataset output \(\.tar shards or \.parquet\)"):
        read_laion(empty.data.sources[0], 0.25)


def test_laion_sample_from_tar_members_or_parquet_columns():
    tar_sample = {"__key__": "000000007", "jpg": png(1), "txt": "a cat on a mat".encode(),
                  "json": json.dumps({"caption": "ignored"}).encode(), "__url__": "00000.tar"}
    record = laion_row(tar_sample, source="laion", **KW)
    assert record["id"] == "000000007" and record["target_text"] == "a cat on a mat"
    assert parse_messages(record["messages"])[0] == {"role": "user", "content": CAPTION_PROMPT}
    no_txt = {**tar_sample, "txt": None}
    assert laion_row(no_txt, source="laion", **KW)["target_text"] == "ignored"  # .json caption
    parquet = {"key": "1", "image": {"bytes": png(2), "path": None}, "caption": "a dog"}
    assert laion_row(parquet, source="laion", **KW)["image"] == png(2)
    failed = {"key": "2", "jpg": None, "txt": "x", "status": "failed_to_download",
              "error_message": "timeout"}
    with pytest.raises(RecordError, match="failed_to_download.*timeout") as err:
        laion_row(failed, source="laion", **KW)
    assert err.value.reason == "missing_image"


def test_rlaif_v_trains_on_chosen_only():
    row = {"ds_name": "RLAIF-V", "idx": "3", "image": {"bytes": png(3), "path": "a.jpg"},
           "question": "<image>\nWhat is it?", "chosen": "A kite.", "rejected": "A dragon."}
    record = rlaif_v_row(row, source="rlaif", **KW)
    assert record["id"] == "RLAIF-V/3"
    assert parse_messages(record["messages"]) == [
        {"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A kite."}]
    assert record["target_text"] == "A kite." and "dragon" not in json.dumps(record, default=str)
    with pytest.raises(RecordError) as err:
        rlaif_v_row({**row, "question": ""}, source="rlaif", **KW)
    assert err.value.reason == "empty_question"


def test_ocrvqa_turns_and_the_multi_turn_target_rule():
    row = {"images": [{"bytes": png(4), "path": None}],
           "texts": [{"user": "Who wrote this book?", "assistant": "Jane Austen.", "source": "o"},
                     {"user": "Is this a comedy book?", "assistant": "No", "source": "o"}]}
    record = ocrvqa_row(row, source="ocr", **KW)
    assert [m["role"] for m in parse_messages(record["messages"])] == ["user", "assistant"] * 2
    assert record["target_text"] == "Jane Austen. No"  # every answer, in order, joined by a space
    assert record["id"] == FORMATS["ocrvqa"].row_id(row, "ocr")
    other_image = {**row, "images": [{"bytes": png(5), "path": None}]}
    assert FORMATS["ocrvqa"].row_id(other_image, "ocr") != record["id"]
    with pytest.raises(RecordError) as err:
        ocrvqa_row({**row, "texts": [{"user": "", "assistant": "x"}]}, source="ocr", **KW)
    assert err.value.reason == "empty_question"


def test_sampling_hash_is_deterministic_and_hits_its_fraction():
    ids = [f"id-{i}" for i in range(20000)]
    kept = [i for i in ids if keep_record(i, 0.3, seed=1, source="a")]
    assert kept == [i for i in ids if keep_record(i, 0.3, seed=1, source="a")]
    assert abs(len(kept) / len(ids) - 0.3) < 4 * (0.3 * 0.7 / len(ids)) ** 0.5
    assert kept != [i for i in ids if keep_record(i, 0.3, seed=2, source="a")]
    assert kept != [i for i in ids if keep_record(i, 0.3, seed=1, source="b")]
    smaller = {i for i in ids if keep_record(i, 0.1, seed=1, source="a")}
    assert smaller <= set(kept)  # nested: a smaller fraction keeps a subset
    assert all(keep_record(i, 1.0, seed=1, source="a") for i in ids[:10])


def test_source_fraction_rules():
    cfg = load_config("demo", {"data.sources": [
        {"name": "a", "format": "rlaif_v", "path": "x"},
        {"name": "b", "format": "rlaif_v", "path": "y", "fraction": 0.25}]})
    a, b = cfg.data.sources
    assert source_fraction(a, None, None) == 1.0
    assert source_fraction(a, 50.0, 200) == 0.25
    assert source_fraction(a, 500.0, 200) == 1.0
    assert source_fraction(b, 50.0, 1000) == 0.25  # an explicit fraction wins
    with pytest.raises(ValueError, match="holds no rows"):
        source_fraction(a, 50.0, 0)


@pytest.mark.parametrize(
    "source, message",
    [({"name": "x", "format": "laion", "path": "p", "splits": ["train"]},
      "'splits' applies to format 'flickr30k' only"),
     ({"name": "x", "format": "rlaif_v", "path": "p", "captions": "first"},
      "'captions' applies to format 'flickr30k' only"),
     ({"name": "x", "format": "flickr30k", "path": "p.json"}, "needs 'image_root'"),
     ({"name": "x", "format": "flickr30k", "path": "p", "image_root": "i", "splits": ["dev"]},
      "splits"),
     ({"name": "x", "format": "ocrvqa", "path": "p", "fraction": 1.5}, "fraction")],
)
def test_new_source_options_are_validated(source, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", {"data.sources": [source]})


def test_source_names_must_be_unique():
    same = {"name": "a", "format": "ocrvqa", "path": "p"}
    with pytest.raises(ConfigError, match=r"repeated: \['a'\]"):
        load_config("demo", {"data.sources": [same, same]})
