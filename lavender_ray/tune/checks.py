"""Checks `run_tune` makes before any trial starts: the metric and ASHA settings, the State API,
the concurrency the cluster allows, and whether the experiment may start or resume."""

from __future__ import annotations

import math
import warnings

import ray
import yaml
from ray.tune import Tuner
from ray.util.state import list_nodes

from lavender_ray.config import ConfigError, LavenderConfig, config_differences
from lavender_ray.placement import worker_request, worker_slots
from lavender_ray.resources import ResourcePlan, trial_pieces
from lavender_ray.storage import read_text
from lavender_ray.train.schedule import report_steps
from lavender_ray.tune.layout import TuneLayout

TUNABLE_METRICS = ("loss/total", "loss/lm", "loss/att", "align/matched_words")


def check_tune_config(cfg: LavenderConfig) -> int:
    """Metric and ASHA settings; returns the number of reports per trial (ASHA's `max_t`)."""
    t = cfg.tune
    if t.metric not in TUNABLE_METRICS:
        raise ConfigError(
            f"tune.metric={t.metric!r} is not a metric trials report; allowed: "
            + ", ".join(TUNABLE_METRICS)
        )
    reports = len(report_steps(cfg.train))
    if t.grace_period >= reports:
        raise ConfigError(
            f"tune.grace_period={t.grace_period} (in reports) must be < the reports per trial "
            f"({reports}: every train.report_every={cfg.train.report_every} and every "
            f"train.checkpoint_every={cfg.train.checkpoint_every} steps up to "
            f"train.max_steps={cfg.train.max_steps}), or ASHA can never stop a trial"
        )
    return reports


def require_state_api() -> None:
    """Refuse a Ray without the dashboard (State API): stopped trials would keep their
    placement groups and the next trials would wait forever."""
    context = ray.get_runtime_context()
    try:
        nodes = list_nodes(address=context.gcs_address, timeout=30)
        answered = context.get_node_id() in {n.node_id for n in nodes}
        reason = "its State API answered for another cluster"
    except Exception as err:  # ServerUnavailable, ConnectionError, RayStateApiException
        answered, reason = False, f"{type(err).__name__}: {err}"
    if not answered:
        raise RuntimeError(
            "lavender tune needs the Ray dashboard's State API (Ray Train frees the placement "
            "group of a trial stopped early through it); connect to a Ray started with the "
            "dashboard (`ray start --head`, `ray.init(include_dashboard=True)`; "
            f"ray[default] installed). Here: {reason}"
        )


def max_concurrent_trials(cfg: LavenderConfig, nodes: list[dict[str, float]]) -> int:
    """`tune.max_concurrent_trials` capped by how many whole trials fit on `nodes`: their
    worker groups (GPUs of `train.accelerator` with GPU workers, CPUs otherwise) and all a
    trial runs at once (`resources.trial_pieces`: driver, workers, reads, checks). A warning
    says when the cap applies or when no node fits a worker yet (autoscaling:
    `tune.max_concurrent_trials` or 1)."""
    requested = cfg.tune.max_concurrent_trials
    request = worker_request(cfg)
    fit = worker_slots(request, nodes) // cfg.train.num_workers
    if fit == 0:
        limit = requested or 1
        warnings.warn(
            f"no node of the cluster fits a train worker {request} yet (autoscaling?): running "
            f"at most {limit} trial(s) at once (tune.max_concurrent_trials)",
            stacklevel=2,
        )
        return limit
    trial = ResourcePlan("tune", [trial_pieces(cfg)])
    total = {key: sum(node.get(key, 0.0) for node in nodes) for key in ("CPU", "GPU")}
    whole = min(math.floor(total["CPU"] / trial.cpus()) if trial.cpus() else fit,
                math.floor(total["GPU"] / trial.gpus()) if trial.gpus() else fit)
    fit = max(1, min(fit, whole))
    if requested and requested > fit:
        warnings.warn(
            f"tune.max_concurrent_trials={requested} but the cluster fits {fit} trial(s) "
            f"({cfg.train.num_workers} workers {request}, {trial.cpus():g} CPUs and "
            f"{trial.gpus():g} GPUs a trial in all): running at most {fit} at once",
            stacklevel=2,
        )
    return min(requested or fit, fit)


def check_experiment(cfg: LavenderConfig, layout: TuneLayout, resume: bool) -> None:
    """A new experiment must not exist yet; a resumed one must exist with this very config."""
    exists = Tuner.can_restore(layout.experiment_dir)
    if not resume:
        if exists:
            raise ConfigError(
                f"a Tune experiment exists at {layout.experiment_dir}: continue it with "
                "--resume, or choose another train.run_name"
            )
        return
    saved = read_text(layout.config)
    if not exists or saved is None:
        raise ConfigError(f"--resume: no Tune experiment to resume at {layout.experiment_dir}")
    differences = config_differences(yaml.safe_load(saved), cfg.to_dict())
    if differences:
        raise ConfigError(
            f"--resume: the config differs from the experiment's ({layout.config}) in "
            f"{differences}. Resume with the same preset and --set values"
        )
