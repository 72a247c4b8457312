"""The trainer's dataset in its three modes: stream (in test_train), cache, precomputed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_sd_stage import OVERRIDES as SD_OVERRIDES

from lavender_ray.config import ConfigError, load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.pipeline.dataset import build_train_dataset
from lavender_ray.pipeline.extract import export_authors_layout
from lavender_ray.rejects import count_rejects
from lavender_ray.schema import RECORD_SCHEMA
from lavender_ray.sd.authors import image_name_for, read_word_maps
from lavender_ray.sd.settings import sd_config_hash
from lavender_ray.sd.target import SDTarget

pytestmark = pytest.mark.slow  # each mode runs the SD actor pool or reads its cache


def config(tmp: Path, records: list[dict], **extra):
    path = tmp / "records.parquet"
    pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), path)
    return load_config("demo", {**SD_OVERRIDES,
                                "data.sources": [{"name": "r", "format": "records", "path": str(path)}],
                                **extra})


def shard_files(root: Path) -> list[Path]:
    return sorted(root.glob("targets/*/*.parquet"))


@pytest.fixture(scope="module")
def cached(ray_local, tmp_path_factory):
    """A cache filled by a first `cache` mode read of 10 records."""
    tmp = tmp_path_factory.mktemp("cache")
    records = make_synthetic_records(10, seed=3)
    cfg = config(tmp, records, **{"pipeline.mode": "cache", "pipeline.cache_path": str(tmp / "cache")})
    rows = build_train_dataset(cfg, str(tmp / "rejects1")).take_all()
    return tmp, records, cfg, rows


def test_cache_mode_writes_through_then_reuses_without_sd_work(cached):
    tmp, records, cfg, first = cached
    assert sorted(r["id"] for r in first) == sorted(r["id"] for r in records)
    shards = shard_files(tmp / "cache")
    assert shards, "the first run wrote its targets through to the cache"
    # every readable record is cached: no SD actor pool, and the unreadable one is still counted
    unreadable = dict(records[0], id="unreadable", messages="not json")
    cfg = config(tmp, records + [unreadable], **{"pipeline.mode": "cache",
                                                  "pipeline.cache_path": str(tmp / "cache")})
    dataset = build_train_dataset(cfg, str(tmp / "rejects2"))
    assert "SDTargetStage" not in repr(dataset)
    assert count_rejects(str(tmp / "rejects2")) == {"read/bad_messages": 1}
    second = dataset.take_all()
    assert shard_files(tmp / "cache") == shards  # no new shard: no record went through SD
    assert sorted(r["id"] for r in second) == sorted(r["id"] for r in records)
    by_id = {r["id"]: r for r in first}
    for row in second:
        assert row["sd_maps"] == by_id[row["id"]]["sd_maps"]
        assert row["sd_config_hash"] == sd_config_hash(cfg.sd, "cpu")
    # one new record: only that one is extracted (one new shard, one new row)
    extra = make_synthetic_records(11, seed=3)[-1:]
    extra[0]["id"] = "new-record"
    cfg2 = config(tmp, records + extra, **{"pipeline.mode": "cache",
                                            "pipeline.cache_path": str(tmp / "cache")})
    dataset = build_train_dataset(cfg2, str(tmp / "rejects3"))
    assert "SDTargetStage" in repr(dataset)
    third = dataset.take_all()
    assert len(third) == 11
    new_shards = sorted(set(shard_files(tmp / "cache")) - set(shards))
    assert len(new_shards) == 1 and pq.read_table(new_shards[0]).num_rows == 1


def test_precomputed_parquet_joins_by_id_and_rejects_records_without_targets(cached):
    tmp, records, _, _ = cached
    orphan = make_synthetic_records(1, seed=99)
    cfg = config(tmp, records + orphan, **{"pipeline.mode": "precomputed",
                                            "pipeline.precomputed_path": str(tmp / "cache")})
    rejects = str(tmp / "rejects-pre")
    rows = build_train_dataset(cfg, rejects).take_all()
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in records)
    assert count_rejects(rejects) == {"targets/no_targets": 1}


def test_precomputed_from_the_authors_layout(cached):
    tmp, records, cfg, first = cached
    authors = tmp / "authors"
    cached_rows = sum(pq.read_table(f).num_rows for f in shard_files(tmp / "cache"))
    written = export_authors_layout(str(tmp / "cache"), sd_config_hash(cfg.sd, "cpu"), str(authors))
    assert written == cached_rows
    cfg = config(tmp, records, **{"pipeline.mode": "precomputed", "pipeline.precomputed_format": "authors",
                                  "pipeline.precomputed_path": str(authors)})
    rows = build_train_dataset(cfg, str(tmp / "rejects-authors")).take_all()
    assert len(rows) == 10
    for row in rows:
        target = SDTarget.from_row(row)
        on_disk = read_word_maps(authors, image_name_for(row["id"]))
        assert set(target.words) == set(on_disk)
        assert target.maps.shape == (len(on_disk), 32, 32)
        first_word = target.words[0]  # ordered by the record's text
        assert row["target_text"].lower().find(first_word) <= min(
            row["target_text"].lower().find(w) for w in target.words)


def test_modes_name_their_missing_paths():
    with pytest.raises(ConfigError, match="cache_path"):
        build_train_dataset(load_config("demo", ["pipeline.mode=cache"]), "/tmp/unused")
    with pytest.raises(ConfigError, match="precomputed_path"):
        build_train_dataset(load_config("demo", ["pipeline.mode=precomputed"]), "/tmp/unused")
    authors = ["pipeline.mode=precomputed", "pipeline.precomputed_format=authors"]
    for root in ("s3://bucket/lpm", "/no/such/folder"):
        cfg = load_config("demo", [*authors, f"pipeline.precomputed_path={root}"])
        with pytest.raises(ConfigError, match="not an existing folder"):
            build_train_dataset(cfg, "/tmp/unused")
