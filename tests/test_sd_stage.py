"""The SD Ray Data stage, the target cache and the `extract` / `show-targets` commands, on the
tiny SD stack with synthetic records plus every bad-input kind."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_images import bad_image_cases, convertible_cases

from lavender_ray.cli import main
from lavender_ray.config import load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.pipeline.cache import IMAGE_HASH, read_cached_targets
from lavender_ray.pipeline.extract import extract_to_cache
from lavender_ray.pipeline.sd_stage import SDTargetStage, sd_stage_options, stage_device
from lavender_ray.rejects import read_rejects
from lavender_ray.schema import RECORD_SCHEMA, TARGET_FIELDS
from lavender_ray.sd.settings import sd_config_hash
from lavender_ray.sd.target import SDTarget

OVERRIDES = {
    "sd.image_size": 16,
    "sd.attention_resolutions": [4, 8],
    "sd.ddim_steps": 2,
    "sd.guidance_scale": 1.0,
    "sd.batch_size": 8,
    "data.max_image_pixels": 100 * 100,  # the limit bad_image_cases' "huge" image exceeds
    "data.max_text_chars": 200,
}
CONVERTED = ("grayscale", "rgba_transparent", "palette", "gray16", "cmyk_jpeg")
BAD_TEXTS = {
    "empty_text": ("", "empty_text"),
    "whitespace_text": ("  \n\t ", "empty_text"),
    "symbols_text": ("?! -- ...", "no_words"),
    "long_text": ("a red circle " * 20, "text_too_long"),
    "window_text": ("! " * 80 + "dog", "no_words_in_window"),
}


def records_with_every_kind(n_good: int = 12) -> tuple[list[dict], dict[str, str]]:
    """`n_good` synthetic records, convertible images, and every bad kind; plus the expected
    reject reason of each bad record id."""
    records = make_synthetic_records(n_good, seed=0, image_size=48)
    template = records[0]
    expected: dict[str, str] = {}
    for name, (data, reason) in bad_image_cases().items():
        records.append(dict(template, id=f"image-{name}", image=data))
        expected[f"image-{name}"] = reason
    cases = convertible_cases()
    for name in CONVERTED:
        records.append(dict(template, id=f"mode-{name}", image=cases[name][0]))
    for name, (text, reason) in BAD_TEXTS.items():
        records.append(dict(template, id=f"text-{name}", target_text=text))
        expected[f"text-{name}"] = reason
    return records, expected


def check_targets(table: pa.Table, config_hash: str) -> None:
    for row in table.to_pylist():
        target = SDTarget.from_row(row)
        assert target.words and target.maps.shape == (len(target.words), 32, 32)
        assert target.maps.min() >= 0.0 and target.maps.max() <= 1.0
        assert target.config_hash == config_hash
        for word, (start, end) in zip(target.words, target.spans):
            assert row["target_text"][start:end].lower() == word


def test_stage_call_keeps_good_rows_and_rejects_the_rest(tmp_path) -> None:
    cfg = load_config("demo", OVERRIDES)
    records, expected = records_with_every_kind(n_good=3)
    stage = SDTargetStage(cfg.to_dict(), str(tmp_path / "rejects"))
    out = stage(pa.Table.from_pylist(records, schema=RECORD_SCHEMA))
    rejects = {r["id"]: r["reason"] for r in read_rejects(str(tmp_path / "rejects")).to_pylist()}
    assert rejects == expected
    good = {r["id"] for r in records} - set(expected)
    assert set(out["id"].to_pylist()) == good
    assert out.num_rows + len(rejects) == len(records)
    assert out.column_names == RECORD_SCHEMA.names + [name for name, _ in TARGET_FIELDS]
    check_targets(out, sd_config_hash(cfg.sd, "cpu"))


def test_stage_rejects_a_sample_whose_maps_are_not_finite(tmp_path) -> None:
    """A numerical blow-up in one sample's extraction rejects that sample, keeps the others."""
    cfg = load_config("demo", OVERRIDES)
    records = make_synthetic_records(3, seed=0, image_size=48)
    stage = SDTargetStage(cfg.to_dict(), str(tmp_path / "rejects"))
    extract = stage.extractor.extract_planned

    def second_sample_overflows(images, plans):
        results = extract(images, plans)
        results[1].maps[0, 0, 0] = np.inf
        return results

    stage.extractor.extract_planned = second_sample_overflows
    out = stage(pa.Table.from_pylist(records, schema=RECORD_SCHEMA))
    rejects = read_rejects(str(tmp_path / "rejects")).to_pylist()
    assert [(r["id"], r["reason"]) for r in rejects] == [(records[1]["id"], "non_finite_maps")]
    assert out["id"].to_pylist() == [records[0]["id"], records[2]["id"]]
    check_targets(out, sd_config_hash(cfg.sd, "cpu"))


@pytest.mark.slow  # the SD actor pool through Ray Data, twice, and the CLI
def test_ray_extract_counts_every_record_then_the_cli_reruns_from_cache(
    ray_local, tmp_path, capsys
) -> None:
    """Run 1 (library, Ray Data): records in = targets written + rejects. Run 2 (`lavender
    extract` on a Parquet file of the same records, one image changed): only that record is
    extracted again. Then `show-targets` renders from the cache."""
    cfg = load_config("demo", OVERRIDES)
    records, expected = records_with_every_kind()
    cache = tmp_path / "cache"
    first = extract_to_cache(cfg, str(cache), ray_local.data.from_items(records))
    n_good = len(records) - len(expected)
    assert first.written == n_good and first.cached_before == 0
    assert {r["id"]: r["reason"] for r in read_rejects(first.rejects_dir).to_pylist()} == expected
    table = read_cached_targets(str(cache), first.config_hash)
    assert table is not None and table.num_rows == n_good
    assert set(table["id"].to_pylist()) == {r["id"] for r in records} - set(expected)
    check_targets(table, first.config_hash)

    changed = dict(records[1], image=make_synthetic_records(1, seed=5, image_size=48)[0]["image"])
    source = tmp_path / "records.parquet"
    rows = [records[0], changed] + records[2:]
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), source)
    overrides = [f"{k}={v}" for k, v in OVERRIDES.items()]
    overrides.append(f"data.sources=[{{name: synthetic, format: records, path: {source}}}]")
    authors = tmp_path / "authors"
    args = ["extract", "--preset", "demo", "--out", str(cache), "--authors-out", str(authors)]
    assert main(args + [x for o in overrides for x in ("--set", o)]) == 0
    out = capsys.readouterr().out
    assert f"1 written, {n_good} already cached" in out
    # the summary's values start in one column, the log line's too (`logs:` is the console's)
    columns = {re.match(r"\w+: +", line).end() for line in out.splitlines()
               if re.match(r"(targets|config|authors|logs): ", line)}
    assert len(columns) == 1 and "\nlogs: " in out, out
    table = read_cached_targets(str(cache), first.config_hash)
    assert table.num_rows == n_good + 1
    keys = zip(table["id"].to_pylist(), table[IMAGE_HASH].to_pylist())
    assert len({h for rid, h in keys if rid == changed["id"]}) == 2  # old and new image
    assert len(list(authors.iterdir())) == n_good

    pictures = tmp_path / "png"
    show = ["show-targets", "--targets", str(cache), "--out", str(pictures), "--limit", "2"]
    assert main(show) == 0
    pngs = sorted(pictures.glob("*.png"))
    assert len(pngs) == 2
    with Image.open(pngs[0]) as picture:
        assert picture.width > 2 * 160 and np.asarray(picture.convert("L")).std() > 10


@pytest.mark.parametrize("accelerator", [None, "A100"])
def test_stage_options_come_from_the_pipeline_config(accelerator: str | None) -> None:
    overrides = {"pipeline.sd_pool_min": 2, "pipeline.sd_pool_max": 3, "pipeline.sd_num_gpus": 0.5}
    if accelerator:
        overrides["pipeline.sd_accelerator"] = accelerator
    cfg = load_config("demo", overrides)
    options = sd_stage_options(cfg, "rejects")
    assert (options["compute"].min_size, options["compute"].max_size) == (2, 3)
    assert options["num_gpus"] == 0.5 and options["num_cpus"] == cfg.pipeline.sd_num_cpus
    assert options["batch_size"] == cfg.sd.batch_size and options["batch_format"] == "pyarrow"
    assert options.get("accelerator_type") == accelerator
    assert options["fn_constructor_kwargs"] == {"config": cfg.to_dict(), "rejects_dir": "rejects"}
    assert stage_device(cfg) == "cuda"
