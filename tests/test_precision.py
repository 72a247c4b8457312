"""Precision resolution per device and the DeepSpeed config built from the typed config."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lavender_ray.config import ConfigError, load_config
from lavender_ray.placement import Device, resolve_precision
from lavender_ray.train.precision import deepspeed_config, gradient_buckets

CPU = Device("cpu")
A100 = Device("cuda", "NVIDIA A100-SXM4-80GB", bf16=True)
V100 = Device("cuda", "Tesla V100-SXM2-16GB", bf16=False)


@pytest.mark.parametrize(
    "requested, device, expected",
    [("auto", CPU, "fp32"), ("auto", A100, "bf16"), ("auto", V100, "fp16"),
     ("bf16", CPU, "bf16"), ("fp32", V100, "fp32"), ("fp16", V100, "fp16")],
)
def test_resolve_precision(requested, device, expected):
    assert resolve_precision(requested, device) == expected


def test_unsafe_precisions_are_refused_with_reason():
    with pytest.raises(ConfigError, match="fp16.*CPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="V100"):
        resolve_precision("bf16", V100)


def test_current_device_counts_emulated_bf16_as_none(monkeypatch):
    # torch.cuda.is_bf16_supported() is True on a V100 (emulation); only native bf16 counts
    import torch

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return including_emulation  # what torch answers on compute capability 7.0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    device = Device.current()
    assert device == Device("cuda", "Tesla V100-SXM2-16GB", bf16=False)
    assert resolve_precision("auto", device) == "fp16"


def test_deepspeed_config_batch_arithmetic_and_zero3():
    cfg = load_config("demo", ["train.micro_batch_size=2", "train.grad_accum_steps=3",
                               "train.zero_stage=3", "train.zero3_live_parameters=30000000"])
    ds = deepspeed_config(cfg, world_size=4, precision="bf16")
    assert ds["train_batch_size"] == 2 * 3 * 4
    assert ds["zero_optimization"] == {
        "stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
        "stage3_max_live_parameters": 30_000_000, "stage3_max_reuse_distance": 30_000_000,
        "stage3_prefetch_bucket_size": 30_000_000,  # never more than the live window
    }
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    ds2 = deepspeed_config(load_config("demo"), world_size=2, precision="fp16")
    assert ds2["zero_optimization"] == {"stage": 2} and ds2["fp16"]["enabled"]


# what the train worker's module loads: DeepSpeed without MLflow; MLflow still imports afterwards
# (the MLflow tracker) and DeepSpeed's autotuner, never run, has recorded that it has none
WORKER_IMPORT_PROBE = """
import sys
import lavender_ray.train.worker
print("mlflow" in sys.modules)
from deepspeed.autotuning import autotuner
import mlflow
print(autotuner.has_mlflow, mlflow.__name__)
"""


@pytest.mark.slow  # a fresh interpreter importing the train worker's stack (~12 s)
def test_a_train_worker_imports_deepspeed_without_mlflow():
    pytest.importorskip("mlflow")
    probe = subprocess.run([sys.executable, "-c", WORKER_IMPORT_PROBE], capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split() == ["False", "False", "mlflow"]


def test_gradient_buckets_hold_what_is_trained_at_most_deepspeeds_default():
    """DeepSpeed allocates `reduce_bucket_size` elements whole (5e8: 0.93 GiB of a GPU in bf16)
    even when LoRA trains a few million; the engine's buckets are sized to what it trains."""
    assert gradient_buckets(5_930_001) == {"reduce_bucket_size": 5_930_048,  # x 64: ZeRO-2
                                           "allgather_bucket_size": 5_930_048}  # wants x 2
    assert gradient_buckets(10**10)["reduce_bucket_size"] == 500_000_000
    assert gradient_buckets(0)["reduce_bucket_size"] == 64  # DeepSpeed wants > 0
