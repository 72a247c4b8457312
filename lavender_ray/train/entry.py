"""The function Ray Train runs on each worker, as the driver hands it over.

`TorchTrainer` pickles its per-worker function by reference: the driver and Ray Train's
controller import the module that defines it. This module imports nothing, so neither loads
the worker's stack (torch, transformers, PEFT, DeepSpeed: seconds of CPU per process on a small
machine); the workers import `train.worker` when they start."""

from __future__ import annotations

from typing import Any


def run_worker(config: dict[str, Any]) -> None:
    """`train.worker.train_fn_per_worker(config)` on this Ray Train worker."""
    from lavender_ray.train.worker import train_fn_per_worker  # the worker's stack: see above

    train_fn_per_worker(config)
