"""One Tune trial, Ray Train V2 style: a driver function that builds and fits a `TorchTrainer`.

`run_trial` is the function trainable. It receives the trial's sampled values (dotted key ->
value) and, through `tune.with_parameters`, the experiment's trial base config; it rebuilds its
own `LavenderConfig` from those (nothing else from the driver) and calls `train.launch.train` with
`ReportToTune`, which forwards rank 0's reported metrics, the value ASHA ranks them by
(`report.objective`) and each checkpoint's path to Tune.
A trial is a training run, so `train.report_to` gives each trial its own tracker runs, named like
the trial (`train.tracking`; MLflow's embedded store then lives in each trial's run folder, a
tracking server gathers them in one experiment).

Trial names are deterministic: `trial_<index>` from the trial's position in the search (the
search is seeded by `tune.seed`), and the trial's Ray Train run has the same name, under the
experiment's `runs/` folder. A trial restored by `Tuner.restore` therefore finds its own Ray Train
run again and resumes from that run's latest checkpoint.
"""

from __future__ import annotations

import re
from typing import Any

import ray.tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback

from lavender_ray.config import LavenderConfig, apply_overrides
from lavender_ray.train.launch import train
from lavender_ray.tune.report import TUNE_OBJECTIVE, objective

TRIAL_ID = re.compile(r"_(\d+)$")


def trial_index(trial_id: str) -> int:
    """The position of a trial in its search: Tune's ids end in a counter (`4f2a1_00003` -> 3)."""
    match = TRIAL_ID.search(trial_id)
    if match is None:
        raise ValueError(f"Tune trial id {trial_id!r} does not end in _<counter>")
    return int(match.group(1))


def trial_name(trial: Trial) -> str:
    """`trial_003`: Tune's `trial_name_creator` and `trial_dirname_creator`."""
    return f"trial_{trial_index(trial.trial_id):03d}"


def trial_config(base: dict[str, Any], sampled: dict[str, Any], name: str) -> LavenderConfig:
    """The config of trial `name`: `base` + its sampled dotted values, Ray Train run `name`."""
    return LavenderConfig.from_dict(apply_overrides(base, {**sampled, "train.run_name": name}))


class ReportToTune(TuneReportCallback):
    """`TuneReportCallback` that adds to rank 0's metrics the value ASHA ranks the report by
    (`TUNE_OBJECTIVE`: `report.objective` of `tune.metric`)."""

    def __init__(self, metric: str, mode: str) -> None:
        super().__init__()
        self.metric, self.mode = metric, mode

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        first = {**metrics[0], TUNE_OBJECTIVE: objective(metrics[0], self.metric, self.mode)}
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def run_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """Tune function trainable: train one sampled config, reporting to Tune through Ray Train."""
    cfg = trial_config(base, config, ray.tune.get_context().get_trial_name())
    # a restored trial resumes; the experiment's plan (`resources.tune_phases`) counted this
    # trial among those sharing the cluster, so its own share is not checked against all of it
    report = ReportToTune(cfg.tune.metric, cfg.tune.mode)
    train(cfg, callbacks=[report], resume=None, check_resources=False)
