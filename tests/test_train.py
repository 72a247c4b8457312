"""The distributed trainer end to end on a local Ray with the tiny models.

Two trainer runs cover the issue's points (each run costs about a minute here):

- stream mode, ZeRO-2 (`shared_runs.stream_run`, which `test_tracking` reads too): every
  bad-input kind mixed into the records, the SD actor killed once mid-stream; records in = records trained + records rejected, loss finite, words matched,
  checkpoint and verified adapter written;
- ZeRO-3, the model loaded from a local folder (`from_pretrained` inside `deepspeed.zero.Init`),
  with one train worker failing once: the run resumes from its last checkpoint, finishes
  the planned steps, and its adapter is non-empty and shaped like the ZeRO-2 one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from shared_runs import N_GOOD, tiny_train_config
from test_sd_stage import records_with_every_kind

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
