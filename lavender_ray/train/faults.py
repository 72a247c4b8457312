"""`train.fail_at_step`: one injected worker failure, to see a run recover (Ray Train replaces
the worker, the run goes on from its last checkpoint).

Apart from the worker's module so that the driver, which unpickles the workers' exceptions,
imports only this (`train.worker` imports DeepSpeed, which prints a line when imported)."""

from __future__ import annotations

from lavender_ray import storage
from lavender_ray.config import LavenderConfig
from lavender_ray.runs import FAULT_MARKER, run_dir_of


class InjectedFault(RuntimeError):
    """Raised once by `train.fail_at_step` to test recovery from worker failures."""


def maybe_inject_fault(cfg: LavenderConfig, step: int, rank: int) -> None:
    """`train.fail_at_step`: rank 0 raises once at that step (a marker file in the run's
    storage records it, so the replacement worker, wherever it runs, goes on)."""
    if cfg.train.fail_at_step != step or rank != 0:
        return
    marker = f"{run_dir_of(cfg)}/{FAULT_MARKER}"
    if storage.exists(marker):
        return
    storage.write_text(marker, str(step))
    raise InjectedFault(f"train.fail_at_step={step}: injected worker failure")
