"""Paths across processes and nodes: local paths made absolute, URIs kept, checkpoint URIs,
and the checks that refuse local paths on a multi-node cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lavender_ray import storage
from lavender_ray.config import ConfigError, absolute_paths, load_config
from lavender_ray.eval.evaluate import check_local
from lavender_ray.placement import check_shared_folders
from lavender_ray.runs import checkpoint_location
from lavender_ray.train.faults import InjectedFault, maybe_inject_fault
from lavender_ray.train.launch import check_storage, local_paths


def test_text_round_trip_through_a_file_uri(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/a/b/note.txt"
    assert not storage.exists(uri) and storage.read_text(uri) is None
    storage.write_text(uri, "hello")
    assert storage.exists(uri) and storage.read_text(uri) == "hello"
    assert (tmp_path / "a" / "b" / "note.txt").read_text() == "hello"


def test_read_file_makes_one_filesystem_per_folder(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(name.encode())
    storage._folder_filesystem.cache_clear()
    assert storage.read_file(f"file://{tmp_path}/a.jpg") == b"a.jpg"
    assert storage.read_file(f"file://{tmp_path}/b.jpg") == b"b.jpg"
    assert storage.read_file(str(tmp_path / "a.jpg")) == b"a.jpg"
    made = storage._folder_filesystem.cache_info()
    assert (made.misses, made.hits) == (1, 1)


def test_remote_means_a_uri_other_than_file() -> None:
    assert storage.is_remote("s3://bucket/x") and storage.is_remote("gs://bucket/x")
    assert not storage.is_remote("file:///mnt/x") and not storage.is_remote("/mnt/x")
    assert storage.absolute("s3://bucket/x") == "s3://bucket/x"


def test_load_config_makes_local_paths_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_sd").mkdir()
    cfg = load_config("demo", {
        "train.storage_path": "runs",
        "data.rejects_path": "s3://bucket/rejects",
        "pipeline.cache_path": "cache",
        "eval.benchmarks": {"mmstar": "bench/mmstar.tsv"},
        "data.sources": [{"name": "m", "format": "messages", "path": "data/m.jsonl",
                          "image_root": "images"}],
        "sd.model_id": "my_sd",
        "vlm.model_id": "meta-llama/Llama-3.2-11B-Vision-Instruct",
    })  # fmt: skip
    assert cfg.train.storage_path == str(tmp_path / "runs")
    assert cfg.data.rejects_path == "s3://bucket/rejects"
    assert cfg.pipeline.cache_path == str(tmp_path / "cache")
    assert cfg.eval.benchmarks == {"mmstar": str(tmp_path / "bench" / "mmstar.tsv")}
    assert cfg.data.sources[0].path == str(tmp_path / "data" / "m.jsonl")
    assert cfg.data.sources[0].image_root == str(tmp_path / "images")
    assert cfg.sd.model_id == str(tmp_path / "my_sd")  # an existing folder
    assert cfg.vlm.model_id == "meta-llama/Llama-3.2-11B-Vision-Instruct"  # a hub id
    assert absolute_paths(cfg) == cfg


def test_checkpoint_location_keeps_the_storage_scheme() -> None:
    # Ray's Checkpoint.path on s3 storage has no scheme
    assert checkpoint_location("s3://bucket/runs/r1", "bucket/runs/r1/checkpoint_step0000030") == (
        "s3://bucket/runs/r1/checkpoint_step0000030"
    )
    assert checkpoint_location("/mnt/runs/r1", "/mnt/runs/r1/checkpoint_step0000002") == (
        "/mnt/runs/r1/checkpoint_step0000002"
    )


CPU_NODE = {"CPU": 8.0}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0}


def test_multi_node_runs_refuse_every_local_path_they_use() -> None:
    cfg = load_config("demo", ["train.storage_path=s3://bucket/runs",
                               "data.rejects_path=/local/rejects",
                               "pipeline.cache_path=file:///local/cache"])  # fmt: skip
    assert set(local_paths(cfg)) == {"data.rejects_path", "pipeline.cache_path"}
    check_storage(cfg, [CPU_NODE])
    with pytest.raises(ConfigError, match=r"3 nodes.*data\.rejects_path='/local/rejects'.*cache"):
        check_storage(cfg, [CPU_NODE] * 3)
    shared = cfg.model_copy(update={"train": cfg.train.model_copy(update={"shared_storage": True})})
    check_storage(shared, [CPU_NODE] * 3)
    remote = load_config("demo", ["train.storage_path=s3://bucket/runs"])
    assert local_paths(remote) == {}
    check_storage(remote, [CPU_NODE] * 3)


def test_a_gpu_run_submitted_to_a_head_without_gpus_counts_as_multi_node() -> None:
    # autoscaling: only the head is up when the job starts, the GPU nodes come later
    gpu_run = load_config("demo", ["train.use_gpu=true", "train.storage_path=/local/runs"])
    with pytest.raises(ConfigError, match="GPU nodes will be added"):
        check_storage(gpu_run, [CPU_NODE])
    check_storage(gpu_run, [GPU_NODE])  # one machine with its own GPU
    check_storage(load_config("demo", ["train.storage_path=/local/runs"]), [CPU_NODE])


def test_evaluate_refuses_uris_and_unshared_folders_on_a_cluster() -> None:
    with pytest.raises(ConfigError, match="--adapter='s3://b/run/export'"):
        check_local("s3://b/run/export", "--adapter")
    check_local(None, "--out")
    check_local("/mnt/run/export", "--adapter")
    cfg = load_config("demo")
    check_shared_folders(cfg, [CPU_NODE], "--out")
    with pytest.raises(ConfigError, match="--out must be on a mount.*shared_storage=true"):
        check_shared_folders(cfg, [CPU_NODE, GPU_NODE], "--out")
    with pytest.raises(ConfigError, match="GPU nodes will be added"):
        check_shared_folders(cfg, [CPU_NODE], "--adapter and --out", wants_gpus=True)
    shared = load_config("demo", ["train.shared_storage=true"])
    check_shared_folders(shared, [CPU_NODE, GPU_NODE], "--out")


def test_injected_fault_marker_lives_in_the_run_storage(tmp_path: Path, monkeypatch) -> None:
    # the replacement worker runs elsewhere (another folder, another node): the marker is in
    # the run's storage, here a file:// URI, not in the worker's working folder
    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo", [f"train.storage_path=file://{tmp_path}/store",
                               "train.run_name=r", "train.fail_at_step=2"])  # fmt: skip
    maybe_inject_fault(cfg, step=1, rank=0)
    maybe_inject_fault(cfg, step=2, rank=1)
    with pytest.raises(InjectedFault):
        maybe_inject_fault(cfg, step=2, rank=0)
    assert (tmp_path / "store" / "r" / "fault_injected").read_text() == "2"
    maybe_inject_fault(cfg, step=2, rank=0)  # once only
    assert sorted(os.listdir(tmp_path)) == ["store"]
