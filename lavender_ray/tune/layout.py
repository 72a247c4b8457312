"""Where a `lavender tune` experiment keeps its pieces (local paths or URIs).

    <train.storage_path>/<train.run_name>/      the experiment (Tune's own state in it)
        tune_config.yaml                        the experiment's resolved config (for --resume)
        trial_<n>/                              Tune's folder of each trial
        runs/trial_<n>/                         each trial's Ray Train run and checkpoints
        sd_cache/                               the shared SD targets (or pipeline.cache_path)
        trials.md, trials.csv, best.yaml        the outputs (`report`)
"""

from __future__ import annotations

from dataclasses import dataclass

from lavender_ray.config import LavenderConfig
from lavender_ray.runs import run_dir_of
from lavender_ray.storage import absolute


@dataclass(frozen=True)
class TuneLayout:
    """Where an experiment's pieces live (local paths or URIs)."""

    experiment_dir: str
    runs_dir: str
    cache_dir: str
    config: str
    table_md: str
    table_csv: str
    best_preset: str


def layout_of(cfg: LavenderConfig) -> TuneLayout:
    """`<train.storage_path>/<train.run_name>/...`; a local storage path is made absolute."""
    root = run_dir_of(cfg)
    cache = absolute(cfg.pipeline.cache_path or f"{root}/sd_cache")
    return TuneLayout(
        experiment_dir=root,
        runs_dir=f"{root}/runs",
        cache_dir=cache,
        config=f"{root}/tune_config.yaml",
        table_md=f"{root}/trials.md",
        table_csv=f"{root}/trials.csv",
        best_preset=f"{root}/best.yaml",
    )
