"""The paper's data sets through Ray Data: fixtures written in each publisher's on-disk layout
(Karpathy's Flickr30k JSON + image folder, img2dataset tar shards and Parquet, RLAIF-V Parquet,
the_cauldron OCR-VQA Parquet), with one corrupted row of each kind; the mixture's sampling;
`lavender data inspect`."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lavender_ray.cli import main as lavender
from lavender_ray.config import SourceConfig, load_config, read_preset
from lavender_ray.data.formats import CAPTION_PROMPT, FORMATS
from lavender_ray.data.mixture import keep_record, source_quotas
from lavender_ray.data.readers import flickr30k_rows
from lavender_ray.pipeline.read import read_sources, sampling_fractions
from lavender_ray.rejects import read_rejects
from lavender_ray.schema import parse_messages

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FEW_WORKERS = {"data.read_num_cpus": 1.0}  # fewer Ray worker processes on 2 busy cores


def jpeg(shade: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (shade % 256, 80, 160)).save(buf, format="JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ fixtures
def write_flickr30k(root: Path, n_images: int = 5) -> Path:
    """Karpathy's dataset_flickr30k.json + flickr30k-images/: 5 captions per image, a train /
    val / test split; corruptions: an image file missing, an empty caption, a non-object entry."""
    images_dir = root / "flickr30k-images"
    images_dir.mkdir(parents=True)
    entries = []
    for i in range(n_images):
        name = f"{1000092795 + i}.jpg"
        split = "val" if i == 1 else "test" if i == 2 else "train"
        sentences = [{"tokens": ["a", "dog"], "raw": f"A dog number {i} runs, caption {k}.",
                      "imgid": i, "sentid": 5 * i + k} for k in range(5)]
        entries.append({"sentids": [5 * i + k for k in range(5)], "imgid": i,
                        "sentences": sentences, "split": split, "filename": name})
        if i != 3:  # image 3 (train) is missing on disk: 5 missing_image rejects
            (images_dir / name).write_bytes(jpeg(i))
    entries[4]["sentences"][2]["raw"] = "   "  # one empty caption: empty_text
    entries.append("not an image entry")  # bad_json
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return path


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_laion_shards(root: Path, n_per_shard: int = 4, n_shards: int = 2) -> Path:
    """img2dataset webdataset output: NNNNN.tar of <key>.jpg/.txt/.json, plus the metadata
    .parquet and _stats.json it writes next to each shard. Corruptions in shard 0: a sample
    without .txt (empty_text), one whose .txt is not UTF-8 (bad_encoding), one without image
    (missing_image)."""
    root.mkdir(parents=True)
    for shard in range(n_shards):
        keys = [f"{shard:05d}{k:04d}" for k in range(n_per_shard + (3 if shard == 0 else 0))]
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for k, key in enumerate(keys):
                meta = {"url": f"http://x/{key}.jpg", "caption": f"photo {key}", "key": key,
                        "status": "success", "width": 16, "height": 16}
                if k <= n_per_shard + 1:
                    _add_member(tar, f"{key}.jpg", jpeg(k))
                if k < n_per_shard:
                    _add_member(tar, f"{key}.txt", f"a photo of item {key}".encode())
                elif k == n_per_shard + 1:
                    _add_member(tar, f"{key}.txt", b"\xff\xfe broken")
                elif k == n_per_shard + 2:
                    _add_member(tar, f"{key}.txt", b"caption without image")
                meta["caption"] = None if k == n_per_shard else meta["caption"]
                _add_member(tar, f"{key}.json", json.dumps(meta).encode())
        pq.write_table(pa.table({"key": keys, "status": ["success"] * len(keys)}),
                       root / f"{shard:05d}.parquet")
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": len(keys)}))
    return root


def write_laion_parquet(root: Path, n: int = 4) -> Path:
    """img2dataset parquet output: key, jpg, txt, url, status, error_message per row; one failed
    download (null jpg: missing_image)."""
    root.mkdir(parents=True)
    rows = [{"key": f"1{k:08d}", "jpg": jpeg(k), "txt": f"laion caption {k}",
             "url": f"http://x/{k}", "status": "success", "error_message": None}
            for k in range(n)]
    rows.append({"key": "199999999", "jpg": None, "txt": "never downloaded", "url": "http://x/y",
                 "status": "failed_to_download", "error_message": "404 Not Found"})
    pq.write_table(pa.Table.from_pylist(rows), root / "00000.parquet")
    return root


def write_rlaif_v(root: Path, n: int = 5) -> Path:
    """RLAIF-V-Dataset_000.parquet: ds_name, image {bytes, path}, question, chosen, rejected,
    origin_dataset, origin_split, idx, image_path; corruptions: empty chosen, null image."""
    root.mkdir(parents=True)
    rows = [{"ds_name": "RLAIF-V", "image": {"bytes": jpeg(k), "path": f"{k}.jpg"},
             "question": f"What is shown in picture {k}?", "chosen": f"A red kite number {k}.",
             "rejected": f"HALLUCINATED dragon {k}.", "origin_dataset": "COCO",
             "origin_split": json.dumps({"model": "x"}), "idx": str(k), "image_path": f"{k}.jpg"}
            for k in range(n)]
    rows.append({**rows[0], "idx": "bad-chosen", "chosen": "  "})
    rows.append({**rows[0], "idx": "bad-image", "image": None})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("ds_name", pa.string()), ("image", HF_IMAGE), ("question", pa.string()),
        ("chosen", pa.string()), ("rejected", pa.string()), ("origin_dataset", pa.string()),
        ("origin_split", pa.string()), ("idx", pa.string()), ("image_path", pa.string())]))
    pq.write_table(table, root / "RLAIF-V-Dataset_000.parquet")
    return root


def write_ocrvqa(root: Path, n: int = 4) -> Path:
    """the_cauldron ocrvqa train-00000-of-00001.parquet: images [{bytes, path}], texts
    [{user, assistant, source}] with 3 turns; corruptions: an empty answer, two images, none."""
    root.mkdir(parents=True)
    turns = [("Who wrote this book?", "Stephen King."), ("What is the title?", "It"),
             ("Is this a comedy book?", "No")]

    def row(k: int, images: int = 1, empty_answer: bool = False) -> dict:
        texts = [{"user": u, "assistant": "" if empty_answer and i == 1 else a,
                  "source": "ocrvqa"} for i, (u, a) in enumerate(turns)]
        texts[1]["assistant"] = texts[1]["assistant"] and f"It {k}"
        return {"images": [{"bytes": jpeg(k + j), "path": None} for j in range(images)],
                "texts": texts}

    rows = [row(k) for k in range(n)] + [row(90, empty_answer=True), row(91, images=2),
                                         row(92, images=0)]
    schema = pa.schema([("images", pa.list_(HF_IMAGE)), ("texts", pa.list_(pa.struct(
        [("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "train-00000-of-00001.parquet")
    return root


def reject_reasons(rejects_dir: Path) -> dict[tuple[str, str], int]:
    """{(source, reason): count} of everything rejected."""
    out: dict[tuple[str, str], int] = {}
    for r in read_rejects(str(rejects_dir)).to_pylist():
        out[(r["source"], r["reason"])] = out.get((r["source"], r["reason"]), 0) + 1
    return out


# ----------------------------------------------------------------------------------- readers
def test_four_paper_sources_read_through_ray_data(ray_local, tmp_path):
    sources = [
        {"name": "flickr", "format": "flickr30k", "splits": ["train"],
         "path": str(write_flickr30k(tmp_path / "flickr")),
         "image_root": str(tmp_path / "flickr" / "flickr30k-images")},
        {"name": "laion_tar", "format": "laion", "path": str(write_laion_shards(tmp_path / "wds"))},
        {"name": "laion_pq", "format": "laion", "path": str(write_laion_parquet(tmp_path / "lpq"))},
        {"name": "rlaif", "format": "rlaif_v", "path": str(write_rlaif_v(tmp_path / "rlaif"))},
        {"name": "ocr", "format": "ocrvqa", "path": str(write_ocrvqa(tmp_path / "ocr"))},
        {"name": "flickr_first", "format": "flickr30k", "captions": "first",
         "splits": ["val", "test"], "path": f"file://{tmp_path}/flickr/dataset_flickr30k.json",
         "image_root": f"file://{tmp_path}/flickr/flickr30k-images"},
    ]
    cfg = load_config("demo", {**FEW_WORKERS, "data.sources": sources})
    rows = read_sources(cfg, str(tmp_path / "rejects")).take_all()
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)

    # Flickr30k train: images 0 and 4 on disk (3 is missing), 5 captions each, one empty
    flickr = {r["id"]: r for r in by_source["flickr"]}
    assert sorted(flickr) == sorted([f"1000092795.jpg#{k}" for k in range(5)]
                                    + [f"1000092799.jpg#{k}" for k in (0, 1, 3, 4)])
    # the same file through URIs: first caption only, val and test splits only
    first = sorted(r["id"] for r in by_source["flickr_first"])
    assert first == ["1000092796.jpg#0", "1000092797.jpg#0"]
    sample = flickr["1000092795.jpg#3"]
    assert parse_messages(sample["messages"]) == [
        {"role": "user", "content": CAPTION_PROMPT},
        {"role": "assistant", "content": "A dog number 0 runs, caption 3."}]
    assert sample["target_text"] == "A dog number 0 runs, caption 3."
    assert sample["image"] == (tmp_path / "flickr/flickr30k-images/1000092795.jpg").read_bytes()

    # LAION: 4 good samples per shard (2 shards), metadata parquet/_stats.json ignored
    laion = {r["id"]: r for r in by_source["laion_tar"]}
    assert len(laion) == 8 and laion["000010002"]["target_text"] == "a photo of item 000010002"
    assert Image.open(io.BytesIO(laion["000000001"]["image"])).size == (16, 16)
    assert sorted(r["id"] for r in by_source["laion_pq"]) == [f"1{k:08d}" for k in range(4)]

    # RLAIF-V: chosen is the answer and the target; rejected appears nowhere
    rlaif = {r["id"]: r for r in by_source["rlaif"]}
    assert sorted(rlaif) == [f"RLAIF-V/{k}" for k in range(5)]
    assert rlaif["RLAIF-V/2"]["target_text"] == "A red kite number 2."
    question = parse_messages(rlaif["RLAIF-V/2"]["messages"])[0]["content"]
    assert question == "What is shown in picture 2?"
    assert not any("HALLUCINATED" in r["messages"] + r["target_text"] for r in rows)

    # OCR-VQA: 3 turns -> 6 messages; target = the answers joined
    ocr = by_source["ocr"]
    assert len(ocr) == 4
    turns = parse_messages(ocr[0]["messages"])
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert ocr[0]["target_text"] == " ".join(t["content"] for t in turns[1::2])
    assert ocr[0]["target_text"].startswith("Stephen King. It ")

    assert reject_reasons(tmp_path / "rejects") == {
        ("flickr", "missing_image"): 5, ("flickr", "empty_text"): 1, ("flickr", "bad_json"): 1,
        ("flickr_first", "bad_json"): 1,  # the non-object entry belongs to no split
        ("laion_tar", "empty_text"): 1, ("laion_tar", "bad_encoding"): 1,
        ("laion_tar", "missing_image"): 1, ("laion_pq", "missing_image"): 1,
        ("rlaif", "empty_text"): 1, ("rlaif", "missing_image"): 1,
        ("ocr", "empty_text"): 1, ("ocr", "multiple_images"): 1, ("ocr", "missing_image"): 1,
    }
    rejected_ids = {r["id"] for r in read_rejects(str(tmp_path / "rejects")).to_pylist()}
    assert {"1000092798.jpg#0", "1000092799.jpg#2", "000000004", "199999999", "RLAIF-V/bad-image",
            "RLAIF-V/bad-chosen"} <= rejected_ids


# ----------------------------------------------------------------------------------- mixture
def raw_ids(source: SourceConfig) -> list[str]:
    """The ids of every raw row of a fixture source, computed without Ray."""
    if source.format == "flickr30k":
        path = Path(source.path)
        rows = flickr30k_rows({"bytes": path.read_bytes(), "path": str(path)}, None, "all")
    else:
        rows = [r for f in sorted(Path(source.path).glob("*.parquet"))
                for r in pq.read_table(f).to_pylist()]
    return [FORMATS[source.format].row_id(r, source.name) for r in rows]


def test_mixture_proportions_hold_and_sampling_is_deterministic(ray_local, tmp_path):
    sources = [
        {"name": "flickr", "format": "flickr30k", "path": str(write_flickr30k(tmp_path / "f", 60)),
         "image_root": str(tmp_path / "f" / "flickr30k-images"), "weight": 29},
        {"name": "laion", "format": "laion", "path": str(write_laion_parquet(tmp_path / "l", 250)),
         "weight": 50},
        {"name": "rlaif", "format": "rlaif_v", "path": str(write_rlaif_v(tmp_path / "r", 300)),
         "weight": 83},
        {"name": "ocr", "format": "ocrvqa", "path": str(write_ocrvqa(tmp_path / "o", 150)),
         "weight": 30},
    ]
    cfg = load_config("demo", {**FEW_WORKERS, "data.sources": sources, "data.total_samples": 240,
                               "data.seed": 7})
    quotas = source_quotas(cfg.data)
    assert quotas == pytest.approx({"flickr": 36.25, "laion": 62.5, "rlaif": 103.75, "ocr": 37.5})
    fractions = sampling_fractions(cfg.data)  # counts the raw rows, corrupted ones included
    ids = {s.name: raw_ids(s) for s in cfg.data.sources}
    assert fractions == pytest.approx({k: quotas[k] / len(v) for k, v in ids.items()})

    rows = read_sources(cfg, str(tmp_path / "rejects")).select_columns(["id", "source"]).take_all()
    rejects = read_rejects(str(tmp_path / "rejects")).to_pylist()
    for name, quota in quotas.items():
        drawn = {r["id"] for r in rows + rejects if r["source"] == name}
        # deterministic: exactly the rows whose (seed, source, id) hash falls under the fraction
        assert drawn == {i for i in ids[name] if keep_record(i, fractions[name], 7, name)}
        assert drawn != {i for i in ids[name] if keep_record(i, fractions[name], 8, name)}
        # proportions: each source's draw is its quota within binomial sampling error
        sigma = math.sqrt(len(ids[name]) * fractions[name] * (1 - fractions[name]))
        assert abs(len(drawn) - quota) < 4 * sigma, (name, len(drawn), quota, sigma)


def test_paper_mixture_preset_sums_to_the_paper_total():
    cfg = load_config("paper_mixture")
    quotas = source_quotas(cfg.data)
    assert [s.format for s in cfg.data.sources] == ["flickr30k", "laion", "rlaif_v", "ocrvqa"]
    assert sum(quotas.values()) == pytest.approx(130_000)
    assert {k: round(v) for k, v in quotas.items()} == {
        "flickr30k": 19_635, "laion": 33_854, "rlaif_v": 56_198, "ocrvqa": 20_312}
    # the preset's placeholders are relative to the working folder, resolved when loaded
    raw_sources = read_preset("paper_mixture")["data"]["sources"]
    assert all(not s["path"].startswith("/") for s in raw_sources)
    assert all(s.path.startswith(os.getcwd() + "/data/") for s in cfg.data.sources)


# ----------------------------------------------------------------------------------- inspect
def test_data_inspect_prints_counts_rejects_samples_and_writes_a_sheet(ray_local, tmp_path, capsys):
    write_rlaif_v(tmp_path / "r")
    write_ocrvqa(tmp_path / "o")
    out = tmp_path / "inspect"
    code = lavender([
        "data", "inspect", "--preset", "paper_mixture", "--out", str(out), "--samples", "2",
        "--set", f"data.sources=[{{name: rlaif, format: rlaif_v, path: {tmp_path}/r}}, "
        f"{{name: ocr, format: ocrvqa, path: {tmp_path}/o}}]",
        "--set", "data.total_samples=null", "--set", "data.read_num_cpus=1",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    lines = printed.splitlines()
    assert any(line.split()[:2] == ["rlaif", "5"] for line in lines)
    assert any(line.split()[:2] == ["ocr", "4"] for line in lines)
    assert any("read/multiple_images" in line and line.split()[-1] == "1" for line in lines)
    assert "question: Who wrote this book?" in printed
    assert "answer:   Stephen King. | It " in printed  # the turns of a multi-turn sample
    assert printed.count("--- [rlaif]") == 2 and printed.count("--- [ocr]") == 2
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (4 * 192, 192 + 120)
        assert len(sheet.getcolors(1 << 20)) > 10  # thumbnails and text were drawn
