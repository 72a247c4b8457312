"""The per-worker helpers of `lavender_ray.train.worker` and the trainer's ingest options,
without a Ray cluster or a process group."""

from __future__ import annotations

import math

import pytest
import torch

from lavender_ray.train.reporting import (
    MetricMeter,
    all_reduce_sum,
    average_norm_statistics,
    format_metrics,
)
from lavender_ray.train.step import TrainBatch
from lavender_ray.train.worker import cast_inputs


def test_all_reduce_sum_without_a_process_group_is_the_value():
    assert all_reduce_sum(7.0, torch.device("cpu")) == 7.0


class _Reduced(Exception):
    """Stops `all_reduce_sum` after the fake collective saw its tensor."""


def test_all_reduce_sum_puts_its_tensor_on_the_engine_device(monkeypatch):
    # NCCL-only process groups (Ray Train with use_gpu) reject CPU tensors: the summed tensor
    # must live on the device it is given. `meta` stands in for cuda on this CPU machine.
    seen: list[torch.Tensor] = []

    def fake_all_reduce(t: torch.Tensor) -> None:
        seen.append(t)
        raise _Reduced

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    with pytest.raises(_Reduced):
        all_reduce_sum(3.0, torch.device("meta"))
    assert seen[0].device.type == "meta"
    assert seen[0].dtype == torch.float64


def test_batch_norm_statistics_are_averaged_over_ranks(monkeypatch):
    # two ranks: the other rank's running mean is 1 and running var 3 everywhere
    norm = torch.nn.BatchNorm2d(2)
    norm.running_mean.fill_(0.5)
    norm.running_var.fill_(1.0)
    others = iter([torch.ones(2), torch.full((2,), 3.0)])

    def fake_all_reduce(t: torch.Tensor) -> None:
        t.add_(next(others))

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), norm, torch.nn.GroupNorm(1, 2))
    average_norm_statistics(module, torch.device("cpu"))
    assert norm.running_mean.tolist() == [0.75, 0.75]
    assert norm.running_var.tolist() == [2.0, 2.0]


def test_metric_meter_means_between_reports_then_starts_over():
    meter = MetricMeter()
    meter.add({"loss/total": 1.0, "align/matched_words": 2})
    meter.add({"loss/total": 3.0, "align/matched_words": 4})
    assert meter.means() == {"loss/total": 2.0, "align/matched_words": 3.0}
    assert meter.means() == {}
    meter.add({"loss/total": 5.0})
    assert meter.means() == {"loss/total": 5.0}


def test_format_metrics_shows_known_keys_in_order():
    line = format_metrics(
        {"step": 10.0, "loss/att": 0.5, "loss/total": 1.25, "other": 9.0, "loss/lm": math.nan},
        max_steps=30,
    )
    assert line == "step 10/30  loss/total 1.25  loss/lm nan  loss/att 0.5"


def test_cast_inputs_casts_floating_inputs_only():
    batch = TrainBatch(
        inputs={
            "input_ids": torch.tensor([[1, 2, 3]]),
            "pixel_values": torch.zeros(1, 3, 4, 4),
            "image_sizes": [(4, 4)],
        },
        sd_words=[["dog"]],
        sd_maps=[torch.zeros(1, 2, 2)],
    )
    out = cast_inputs(batch, torch.device("cpu"), torch.bfloat16)
    assert out.inputs["input_ids"].dtype == torch.int64
    assert out.inputs["pixel_values"].dtype == torch.bfloat16
    assert out.inputs["image_sizes"] == [(4, 4)]
    assert out.sd_maps[0].dtype == torch.float32  # targets keep full precision


def test_ingest_options_carry_no_deprecated_field():
    import warnings

    from ray.train import DataConfig
    from ray.util.annotations import RayDeprecationWarning

    from lavender_ray.train.launch import ingest_config

    with warnings.catch_warnings():
        warnings.simplefilter("error", RayDeprecationWarning)
        with pytest.raises(RayDeprecationWarning):  # what Ray Train's default does
            DataConfig()._resolve_execution_options("train")
        options = ingest_config()._resolve_execution_options("train")
    assert options.preserve_order is False
