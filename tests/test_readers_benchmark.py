"""Benchmark rows: VLMEvalKit TSV (as its pandas `to_csv(sep="\\t")` writes it: base64 images,
image references, A-D option columns with gaps, list-literal answers, quoted tabs and newlines)
and the Parquet / JSONL equivalents, read through Ray Data into `BENCHMARK_SCHEMA`."""

from __future__ import annotations

import base64
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lavender_ray.data.benchmarks import benchmark_image, benchmark_row
from lavender_ray.pipeline.benchmarks import read_benchmark
from lavender_ray.rejects import read_rejects
from lavender_ray.schema import BENCHMARK_SCHEMA, RecordError
from lavender_ray.storage import read_file


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (shade, 0, 255 - shade)).save(buf, format="PNG")
    return buf.getvalue()


def b64(shade: int) -> str:
    return base64.b64encode(png(shade)).decode()


def convert(row: dict, refs: dict | None = None, image_root: str | None = None) -> dict:
    return benchmark_row(row, refs=refs or {}, image_root=image_root, read_bytes=read_file)


# ------------------------------------------------------------------------------- pure converter
def test_multiple_choice_row_options_answers_and_extras():
    row = {"index": "7", "question": "Which colour?", "hint": "Look closely.", "A": "red",
           "B": "blue", "C": None, "D": float("nan"), "answer": "B", "category": "color",
           "image": b64(10), "l2-category": "attribute", "split": "dev"}
    out = convert(row)
    assert out["id"] == "7" and out["image"] == png(10)
    assert json.loads(out["options"]) == {"A": "red", "B": "blue"}  # empty options dropped
    assert json.loads(out["answers"]) == ["B"]
    assert json.loads(out["extras"]) == {"hint": "Look closely.", "l2-category": "attribute",
                                         "split": "dev"}
    pa.Table.from_pylist([out], schema=BENCHMARK_SCHEMA)


@pytest.mark.parametrize(
    "answer, expected",
    [("['Stop', 'stop sign', \"STOP\"]", ["Stop", "stop sign", "STOP"]),  # TextVQA/DocVQA
     ('["12", "twelve"]', ["12", "twelve"]), (["a", "b"], ["a", "b"]), (3.0, ["3"]),
     ("[not a list", ["[not a list"])],
)
def test_answers_accept_list_literals(answer, expected):
    out = convert({"index": 1, "question": "q?", "answer": answer, "image": b64(1)})
    assert json.loads(out["answers"]) == expected
    assert json.loads(out["options"]) == {}


def test_options_column_as_object_or_list_and_image_variants(tmp_path):
    (tmp_path / "x.png").write_bytes(png(3))
    as_list = convert({"id": "a", "question": "q", "options": ["yes", "no"], "answers": ["A"],
                       "image": {"bytes": png(2)}})
    assert json.loads(as_list["options"]) == {"A": "yes", "B": "no"}
    assert as_list["image"] == png(2)
    as_json = convert({"id": "b", "question": "q", "options": '{"A": "1", "B": "2"}',
                       "answer": "A", "image": None, "image_path": "x.png"},
                      image_root=str(tmp_path))
    assert json.loads(as_json["options"]) == {"A": "1", "B": "2"} and as_json["image"] == png(3)
    referenced = convert({"index": "9", "question": "q", "answer": "A", "image": "4"},
                         refs={"4": b64(4)})
    assert referenced["image"] == png(4)


GOOD = {"index": 1, "question": "q", "answer": "A", "image": b64(1)}


@pytest.mark.parametrize(
    "change, reason",
    [({"image": "@@@not-base64@@@" * 8}, "bad_base64"),
     ({"image": "99"}, "missing_image"),  # a reference to a row that is not there
     ({"image": None}, "missing_image"),
     ({"image": str([b64(1), b64(2)])}, "multiple_images"),
     ({"question": "  "}, "empty_question"),
     ({"answer": None}, "missing_answer"),
     ({"options": "{oops"}, "bad_options"),
     ({"options": {"a)": "x"}}, "bad_options"),
     ({"index": None}, "missing_id")],
)
def test_bad_benchmark_rows_are_rejected_with_their_reason(change, reason):
    convert(GOOD)
    with pytest.raises(RecordError) as err:
        convert({**GOOD, **change})
    assert err.value.reason == reason


# ------------------------------------------------------------------------------- through Ray
def write_vlmevalkit_tsv(path) -> None:
    """MMBench-like TSV: index, question, hint, A-D, answer, category, image, l2-category, split;
    row 2 shares row 0's image by reference; rows 10-13 are corrupted."""
    good = [
        {"index": 0, "question": "What colour is it?\tThink.\nAnswer with a letter.",
         "hint": "A hint", "A": "red", "B": "blue", "C": "1", "D": "2", "answer": "A",
         "category": "color", "image": b64(200), "l2-category": "attr", "split": "dev"},
        {"index": 1, "question": "Yes or no?", "hint": None, "A": "yes", "B": "no", "C": None,
         "D": None, "answer": "B", "category": "exist", "image": b64(50), "l2-category": None,
         "split": "dev"},
        {"index": 2, "question": "Circular copy of row 0", "hint": None, "A": "blue", "B": "red",
         "C": None, "D": None, "answer": "B", "category": "color", "image": "0",
         "l2-category": "attr", "split": "dev"},
    ]
    bad = [
        {**good[1], "index": 10, "image": "%%%" * 40},  # bad_base64
        {**good[1], "index": 11, "answer": None},  # missing_answer (e.g. a test split)
        {**good[1], "index": 12, "image": "77"},  # refers to a row that does not exist
        {**good[1], "index": 13, "image": str([b64(1), b64(2)])},  # multi-image
    ]
    pd.DataFrame(good + bad).to_csv(path, sep="\t", index=False)


def test_vlmevalkit_tsv_through_ray(ray_local, tmp_path):
    path = tmp_path / "MMBench_DEV_EN.tsv"
    write_vlmevalkit_tsv(path)
    ds = read_benchmark(str(path), "MMBench_DEV_EN", str(tmp_path / "rejects"))
    rows = {r["id"]: r for r in ds.take_all()}
    assert sorted(rows) == ["0", "1", "2"]
    assert rows["0"]["question"] == "What colour is it?\tThink.\nAnswer with a letter."
    assert json.loads(rows["0"]["options"]) == {"A": "red", "B": "blue", "C": "1", "D": "2"}
    assert json.loads(rows["1"]["options"]) == {"A": "yes", "B": "no"}
    assert rows["2"]["image"] == rows["0"]["image"] == png(200)  # resolved reference
    assert json.loads(rows["0"]["extras"]) == {"hint": "A hint", "l2-category": "attr",
                                               "split": "dev"}
    assert (rows["1"]["category"], json.loads(rows["1"]["answers"])) == ("exist", ["B"])
    rejects = {r["id"]: (r["reason"], r["source"], r["stage"])
               for r in read_rejects(str(tmp_path / "rejects")).to_pylist()}
    assert rejects == {
        "10": ("bad_base64", "MMBench_DEV_EN", "benchmark"),
        "11": ("missing_answer", "MMBench_DEV_EN", "benchmark"),
        "12": ("missing_image", "MMBench_DEV_EN", "benchmark"),
        "13": ("multiple_images", "MMBench_DEV_EN", "benchmark"),
    }


def test_parquet_and_jsonl_equivalents_through_ray(ray_local, tmp_path):
    rows = [{"index": i, "question": f"What does the sign say {i}?", "image": b64(i),
             "answer": str(["stop", "STOP"]), "category": "ocr"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "TextVQA_VAL.parquet")
    lines = [json.dumps({"id": f"j{i}", "question": "Pick one", "options": {"A": "x", "B": "y"},
                         "answers": ["A"], "image": b64(9)}) for i in range(2)]
    (tmp_path / "bench.jsonl").write_text("\n".join(lines + ["{truncated"]) + "\n")

    parquet = read_benchmark(str(tmp_path / "TextVQA_VAL.parquet"), "TextVQA_VAL",
                             str(tmp_path / "rejects"))
    jsonl = read_benchmark(f"file://{tmp_path}/bench.jsonl", "mine", str(tmp_path / "rejects"))
    rows = {r["id"]: r for r in parquet.union(jsonl).take_all()}  # one Ray job for both
    assert sorted(rows) == ["0", "1", "2", "j0", "j1"]
    assert json.loads(rows["0"]["answers"]) == ["stop", "STOP"]
    assert json.loads(rows["j1"]["options"]) == {"A": "x", "B": "y"}
    assert [r["reason"] for r in read_rejects(str(tmp_path / "rejects")).to_pylist()] == ["bad_json"]


def test_unknown_benchmark_extension_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"\.tsv, \.parquet, \.jsonl"):
        read_benchmark(str(tmp_path / "bench.csv"), "x", str(tmp_path / "rejects"))


def test_a_file_path_in_image_is_rejected_naming_image_path():
    # a user's own JSONL with a relative path in `image` (VLMEvalKit's column holds base64 or a
    # row reference): the reject says where a path goes
    where = r"row 'pics/a\.png'.*'image_path', relative to image_root"
    with pytest.raises(RecordError, match=where):
        benchmark_image({"image": "pics/a.png"}, {}, lambda path, field: b"")
