"""The two models an evaluation compares, as the driver, the scorer and the report name them.

Plain data and nothing heavy: the evaluate driver plans the pipeline with these names and never
loads a model (`eval.generation` does, in the Ray Data actors and the probe task)."""

from __future__ import annotations

from dataclasses import dataclass

from lavender_ray.config import LavenderConfig


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: its name in tables and whether it carries the trained adapter."""

    name: str
    trained: bool

    @property
    def column(self) -> str:
        return f"prediction_{self.name}"


BASE = ModelSpec("base", trained=False)
ADAPTER = ModelSpec("adapter", trained=True)


def inference_device(cfg: LavenderConfig) -> str:
    """CUDA when the eval actors ask for GPUs, else CPU."""
    return "cuda" if cfg.eval.num_gpus > 0 else "cpu"
