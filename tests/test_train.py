"""The distributed trainer end to end on a local Ray with the tiny models.

Two trainer runs cover the issue's points (each run costs about a minute here):

- stream mode, ZeRO-2 (`shared_runs.stream_run`): every bad-input kind mixed into the records,
  the SD actor killed once mid-stream; records in = records trained + records rejected, loss
  finite, words matched, checkpoint and verified adapter written; and what it reported, read
  back from each tracker (metrics.jsonl while it trains, TensorBoard, a real MLflow server,
  offline W&B, the attention PNGs). Every reader of that run lives in this module: the two
  test processes take a module each, and a second module would build the run a second time;
- ZeRO-3, the model loaded from a local folder (`from_pretrained` inside `deepspeed.zero.Init`),
  with one train worker failing once: the run resumes from its last checkpoint, finishes
  the planned steps, and its adapter is non-empty and shaped like the ZeRO-2 one.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from shared_runs import N_GOOD, PICTURE_EVERY, TRACKERS, tiny_train_config
from test_sd_stage import records_with_every_kind

from lavender_ray.runs import CURVES_FILE, METRICS_FILE, TRACKING_FILE, attention_report_dir
from lavender_ray.train.launch import train

pytestmark = pytest.mark.slow  # every test here starts a TorchTrainer


def adapter_shapes(export: str) -> dict[str, tuple[int, ...]]:
    with safe_open(f"{export}/vlm/adapter_model.safetensors", framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.timeout(600)
def test_stream_zero2_trains_counts_every_record_and_survives_an_sd_actor_death(stream_run):
    summary, records, expected = (stream_run[k] for k in ("summary", "records", "expected"))
    metrics = summary.metrics
    assert metrics["step"] == (len(records) - len(expected)) // 2
    assert math.isfinite(metrics["loss/total"]) and math.isfinite(metrics["loss/att"])
    history = [json.loads(line) for line in
               (Path(summary.checkpoint) / "metrics.jsonl").read_text().splitlines()]
    assert sum(h["align/matched_words"] for h in history) > 0
    # records in = records trained + records rejected (the SD actor died once and restarted)
    assert (Path(summary.run_dir) / "rejects" / "sd-fault-2.marker").exists()
    assert metrics["records"] + sum(summary.rejects.values()) == len(records)
    assert metrics["records"] == len(records) - len(expected)
    # the export was verified in the worker; the last one is at <run>/adapter, with the config
    export = Path(summary.adapter)
    assert export == Path(summary.run_dir) / "adapter"
    assert (export / "aligner.safetensors").stat().st_size > 0
    assert (export / "config.yaml").is_file()
    assert adapter_shapes(summary.adapter)
    # the DeepSpeed state holds the trainable tensors (LoRA, Aligner), not the frozen base
    states = torch.load(Path(summary.checkpoint) / "deepspeed" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)
    saved = set(states["module"])
    assert saved and all("lora_" in k or k.startswith("aligner.") for k in saved), sorted(saved)


@pytest.mark.timeout(600)
def test_zero3_resumes_after_a_worker_failure_with_a_full_adapter(stream_run, mllama_folder,
                                                                  tmp_path):
    records, _ = records_with_every_kind(N_GOOD)
    cfg = tiny_train_config(
        tmp_path, records,
        **{"train.zero_stage": 3, "vlm.model_id": str(mllama_folder), "train.max_steps": 4,
           "train.checkpoint_every": 2, "train.report_every": 2, "train.fail_at_step": 3,
           "train.run_name": "zero3"},
    )
    summary = train(cfg)
    run = Path(summary.run_dir)
    assert (run / "fault_injected").read_text() == "3"
    assert summary.metrics["step"] == 4
    history = [json.loads(line) for line in
               (Path(summary.checkpoint) / "metrics.jsonl").read_text().splitlines()]
    assert [int(h["step"]) for h in history] == [2, 4]
    assert [h["train/resumed_from"] for h in history] == [-1, 2]  # resumed at step 2
    assert adapter_shapes(summary.adapter) == adapter_shapes(stream_run["summary"].adapter)


# ------------------------------------------- what the stream run's trackers hold of it
def reported(summary) -> list[dict]:
    return [json.loads(line) for line in
            (Path(summary.run_dir) / METRICS_FILE).read_text().splitlines()]  # fmt: skip


@pytest.mark.timeout(600)
def test_metrics_jsonl_grows_during_the_run_and_curves_png_is_drawn(stream_run):
    summary, seen = stream_run["summary"], stream_run["seen"]
    history = reported(summary)
    assert [h["step"] for h in history] == list(range(1, summary.metrics["step"] + 1))
    assert all({"step", "records", "loss/total"} <= set(h) for h in history)
    # read while training: a report's line is written before Ray Train gets the report (the
    # workers may be steps ahead of the controller), also before the first checkpoint exists:
    # a run that dies before it still leaves its curve
    for s in seen:
        assert s["lines"] == list(range(1, len(s["lines"]) + 1))
        assert len(s["lines"]) >= s["reported"]
    assert any(s["lines"] and not s["checkpoints"] for s in seen), seen
    curves = Image.open(Path(summary.run_dir) / CURVES_FILE)
    assert curves.format == "PNG"
    pictures = sorted((Path(summary.run_dir) / attention_report_dir(PICTURE_EVERY)).glob("*.png"))
    assert pictures and Image.open(pictures[0]).width > 0


@pytest.mark.timeout(600)
def test_tensorboard_holds_every_reported_metric_at_every_report_step(stream_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = stream_run["summary"]
    events = EventAccumulator(str(Path(summary.run_dir) / "tensorboard"),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    history = reported(summary)
    for key in history[0]:
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert logged == pytest.approx({h["step"]: h[key] for h in history}, rel=1e-6), key
    images = [tag for tag in events.Tags()["images"] if tag.startswith("attention/")]
    assert images and {e.step for e in events.Images(images[0])} == set(
        range(PICTURE_EVERY, summary.metrics["step"] + 1, PICTURE_EVERY))
    assert "config/text_summary" in events.Tags()["tensors"]


@pytest.mark.timeout(600)
def test_the_mlflow_server_holds_the_metrics_params_and_pngs(stream_run, mlflow_server):
    from mlflow import MlflowClient

    summary = stream_run["summary"]
    plan = json.loads((Path(summary.run_dir) / TRACKING_FILE).read_text())
    assert plan["mlflow_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    run = client.get_run(plan["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "zero2"
    history = reported(summary)
    for key in history[0]:
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert logged == pytest.approx({h["step"]: h[key] for h in history}, rel=1e-6), key
    assert run.data.params["train.max_steps"] == str(summary.metrics["step"])
    assert run.data.params["train.report_to"] == json.dumps(TRACKERS)
    report = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert CURVES_FILE in report and attention_report_dir(PICTURE_EVERY) in report
    pngs = client.list_artifacts(run.info.run_id, attention_report_dir(PICTURE_EVERY))
    assert pngs and all(f.path.endswith(".png") and f.file_size > 0 for f in pngs)


@pytest.mark.timeout(600)
def test_the_offline_wandb_run_holds_the_metrics(stream_run):
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    summary, wandb_dir = stream_run["summary"], stream_run["wandb_dir"]
    plan = json.loads((Path(summary.run_dir) / TRACKING_FILE).read_text())
    assert plan["wandb_mode"] == "offline"
    folders = sorted(wandb_dir.glob(f"wandb/offline-run-*-{plan['wandb_id']}"))
    assert len(folders) == 1
    logged: dict[int, dict] = {}
    for record in wandb_records(folders[0] / f"run-{plan['wandb_id']}.wandb", pb):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}  # fmt: skip
            logged.setdefault(int(items["_step"]), {}).update(items)
    for h in reported(summary):
        assert {k: logged[h["step"]][k] for k in h} == pytest.approx(h, rel=1e-6)
    assert any(k.startswith("attention/") for k in logged[PICTURE_EVERY])


def wandb_records(path: Path, pb) -> list:
    """The records of a W&B transaction log (`run-<id>.wandb`): a 7-byte file header, then
    LevelDB-log blocks of 32 KiB whose chunks (crc32, length, type) carry protobuf `Record`s."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
