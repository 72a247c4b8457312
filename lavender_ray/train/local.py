"""Lavender training in one process: `fit_local` runs the shared step (`train.step`) in a plain
loop on one device, for tests, the benchmarks and quick experiments on tiny models. The
distributed trainer (`train.worker`) runs the same step under DeepSpeed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lavender_ray.align import Aligner, build_aligner
from lavender_ray.config import LavenderConfig
from lavender_ray.train.step import (
    LavenderModule,
    TrainBatch,
    build_lr_scheduler,
    build_optimizer,
    collate_records,
    optimizer_step,
)
from lavender_ray.vlm import VLMAdapter, build_adapter


@dataclass
class FitResult:
    """What `fit_local` trained and the metrics of every step (`loss/*`, `align/*`, ...)."""

    adapter: VLMAdapter
    aligner: Aligner
    history: list[dict[str, float]] = field(default_factory=list)


def fit_local(
    cfg: LavenderConfig,
    data: Sequence[dict[str, Any]] | Sequence[TrainBatch],
    steps: int | None = None,
    *,
    adapter: VLMAdapter | None = None,
    aligner: Aligner | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train for `steps` (default `train.max_steps`) on CPU/one device, cycling over `data`.

    `data` is records with SD target columns (collated in `train.micro_batch_size` chunks) or
    ready `TrainBatch`es. The adapter is built from `cfg.vlm`/`cfg.lora` unless given; the
    Aligner from `cfg.aligner` unless given. Seeds `train.seed` before building anything.
    """
    steps = steps or cfg.train.max_steps
    torch.manual_seed(cfg.train.seed)
    if adapter is None:
        adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    aligner = aligner or build_aligner(cfg.aligner, adapter.num_heads)
    batches = as_batches(data, adapter, cfg.train.micro_batch_size, cfg.sd.output_size)
    module = LavenderModule(adapter, aligner, cfg.loss, cfg.sd.output_size)
    module.train()
    optimizer = build_optimizer(module, cfg.optim)
    scheduler = build_lr_scheduler(optimizer, cfg.optim, steps_per_epoch=len(batches))
    result = FitResult(adapter, aligner)
    for step in range(steps):
        out = module(batches[step % len(batches)], step, steps)
        grad_norm = optimizer_step(out.total, optimizer, module, cfg.optim.grad_clip)
        out.metrics["optim/grad_norm"] = math.nan if grad_norm is None else grad_norm
        scheduler.step()
        result.history.append(out.metrics)
        if on_step is not None:
            on_step(step, out.metrics)
    return result


def as_batches(
    data: Sequence[dict[str, Any]] | Sequence[TrainBatch],
    adapter: VLMAdapter,
    batch_size: int,
    map_size: int,
) -> list[TrainBatch]:
    """`TrainBatch`es as given, or records collated in chunks of `batch_size` (order kept)."""
    if not data:
        raise ValueError("no training data: got an empty sequence")
    if all(isinstance(item, TrainBatch) for item in data):
        return list(data)  # type: ignore[arg-type]
    records = list(data)
    return [
        collate_records(records[i : i + batch_size], adapter, map_size)  # type: ignore[arg-type]
        for i in range(0, len(records), batch_size)
    ]
