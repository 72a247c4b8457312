"""ZeRO-3 builds the VLM partitioned: with `train.zero_stage=3` a model loaded by `from_pretrained`
(here the tiny Mllama saved to a local folder, the real loading path) is created inside
`deepspeed.zero.Init`, so each of the two ranks holds half of every base weight before
`deepspeed.initialize`, LoRA is applied on top, and a training step runs. Under ZeRO-2 the same
build holds every weight whole on every rank. The end-to-end run (Ray Train, export, resume) is
`test_train.py::test_zero3_resumes_after_a_worker_failure_with_a_full_adapter`."""

from __future__ import annotations

import pytest
from ranks import run_two_ranks

pytestmark = pytest.mark.slow  # two DeepSpeed ranks in subprocesses

SCRIPT = r"""
import os, sys
import lavender_ray.train.worker as worker
from lavender_ray.config import load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.sd.target import stand_in_target
from lavender_ray.train.reporting import Reporter, TrainState
from lavender_ray.train.step import collate_records

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
folder, stage = sys.argv[1], int(sys.argv[2])
cfg = load_config("demo", [f"vlm.model_id={folder}", f"train.zero_stage={stage}",
                           "loss.word_source=label"])
seen = {}
build_adapter = worker.build_adapter


def watched(*args, **kwargs):  # the adapter as built, before deepspeed.initialize
    adapter = build_adapter(*args, **kwargs)
    base = [p for n, p in adapter.model.named_parameters() if "lora_" not in n]
    seen["partitioned"] = [hasattr(p, "ds_id") for p in base]
    seen["held"] = sum(p.ds_tensor.numel() if hasattr(p, "ds_id") else p.numel() for p in base)
    seen["full"] = sum(getattr(p, "ds_numel", p.numel()) for p in base)
    seen["lora"] = sum(p.numel() for n, p in adapter.model.named_parameters() if "lora_" in n)
    return adapter


worker.build_adapter = watched
engine, module, scheduler, dtype = worker.build_engine(cfg, world)
record = make_synthetic_records(1, seed=rank, image_size=48)[0]
record |= stand_in_target(record["target_text"]).to_row()
reporter = Reporter(cfg, engine, module, scheduler, rank, TrainState())
trained = worker.train_micro_batch(engine, reporter, collate_records([record], module.adapter, 32),
                                   dtype, 10)
trainable = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters()
                if p.requires_grad)
report({**seen, "partitioned": sum(seen["partitioned"]),
        "base_tensors": len(seen["partitioned"]), "trained": trained, "trainable": trainable,
        "bucket": engine.optimizer.reduce_bucket_size})
"""


@pytest.mark.timeout(300)
def test_zero3_builds_every_base_weight_partitioned_and_trains(mllama_folder, tmp_path):
    for rank in run_two_ranks(SCRIPT, tmp_path, 29673, str(mllama_folder), "3"):
        assert rank["partitioned"] == rank["base_tensors"] > 0
        assert rank["held"] <= rank["full"] / 2 + rank["base_tensors"]  # half, each padded
        assert rank["lora"] > 0 and rank["trained"]
        # DeepSpeed allocates its reduce bucket whole: sized to what is trained, not 5e8
        assert rank["trainable"] <= rank["bucket"] < rank["trainable"] + 64


@pytest.mark.timeout(300)
def test_zero2_builds_every_base_weight_whole(mllama_folder, tmp_path):
    for rank in run_two_ranks(SCRIPT, tmp_path, 29672, str(mllama_folder), "2"):
        assert rank["partitioned"] == 0 and rank["held"] == rank["full"]
        assert rank["lora"] > 0 and rank["trained"]
        assert rank["trainable"] <= rank["bucket"] < rank["trainable"] + 64
