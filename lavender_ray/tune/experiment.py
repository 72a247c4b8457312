"""`run_tune`: a Ray Tune search over the config tree, ASHA on `tune.metric`, resumable.

    summary = run_tune(load_config("demo", ["tune.search_space={loss.lambda: loguniform(1, 30)}"]))

On the connected Ray (else a local one sized to the search, `resources.connect`), in this order:

1. the search space is parsed and validated against the config (`space.parse_search_space`),
   storage and placement are checked (`placement.check_placement`), and the experiment's
   resolved config is written to `<experiment>/tune_config.yaml`;
2. the SD targets all trials share are prepared once (`tune.targets`, default `cache`):
   `pipeline.extract.extract_to_cache` fills `pipeline.cache_path` (default
   `<experiment>/sd_cache`), then trials read it in `pipeline.mode=cache` (or `precomputed`: its
   targets folder, no SD actor in a trial); `stream` leaves every trial to run SD itself;
3. a `Tuner` runs `trial.run_trial` (a driver function building a `TorchTrainer`) per sampled
   config with `tune.trial_resources`, ASHA over Tune's reports (`training_iteration`, one per
   `train.report_every` steps) with `tune.grace_period` and `tune.reduction_factor`, at most
   `max_concurrent_trials(cfg, nodes)` trials at once (as many whole trials as the cluster
   holds), trial names `trial_000`, ...;
4. the trials table and the best config as a preset are written (`report`).

The experiment lives in `<train.storage_path>/<train.run_name>/` (Tune's state, one folder per
trial, `runs/<trial>/` with each trial's Ray Train run and checkpoints). Starting over an existing
experiment is refused; `resume=True` restores it with `Tuner.restore`: finished trials are kept
as they are, unfinished ones rerun and their Ray Train runs resume from their latest checkpoint.
ASHA's rungs start empty again after a restore (Tune does not save scheduler state).

Ray Train V2 inside Tune needs the dashboard's State API: it frees the placement group of a trial
that ASHA stops; without it the next trials wait forever, so `run_tune` refuses to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from lavender_ray import console
from lavender_ray.config import ConfigError, LavenderConfig, absolute_paths, apply_overrides
from lavender_ray.pipeline.extract import extract_to_cache
from lavender_ray.pipeline.preflight import check_sources
from lavender_ray.placement import check_placement, cluster_nodes
from lavender_ray.rejects import format_counts, summarise_rejects
from lavender_ray.resources import connect, shares_targets
from lavender_ray.runs import checkpoint_location
from lavender_ray.storage import write_text
from lavender_ray.train.launch import check_storage
from lavender_ray.train.tracking import check_trackers
from lavender_ray.tune.checks import (
    check_experiment,
    check_tune_config,
    max_concurrent_trials,
    require_state_api,
)
from lavender_ray.tune.layout import TuneLayout, layout_of
from lavender_ray.tune.report import (
    TUNE_OBJECTIVE,
    TrialRow,
    best_preset,
    best_trial,
    trial_status,
    trials_csv,
    trials_markdown,
)
from lavender_ray.tune.space import SearchSpace, parse_search_space
from lavender_ray.tune.trial import run_trial, trial_name


@dataclass(frozen=True)
class TuneSummary:
    """What `run_tune` did: trial rows, the best one, where the outputs are."""

    layout: TuneLayout
    rows: list[TrialRow]
    best: TrialRow | None
    metric: str
    expected_trials: int
    interrupted: bool  # trials unfinished or not created yet: `resume=True` continues
    max_concurrent_trials: int | None  # None when resumed: the experiment's own setting applies
    rejects_dir: str | None = None  # the best (else the first) trial's: every trial reads alike


def describe(summary: TuneSummary) -> str:
    """Where a tuning run's outputs went, for people."""
    layout, best = summary.layout, summary.best
    statuses = sorted({r.status for r in summary.rows})
    counts = ", ".join(f"{sum(r.status == s for r in summary.rows)} {s}" for s in statuses)
    lines = [
        f"experiment: {layout.experiment_dir}  ({len(summary.rows)} of "
        f"{summary.expected_trials} trials: {counts})",
        f"trials:     {layout.table_md}  {layout.table_csv}",
    ]
    if summary.max_concurrent_trials is not None:
        lines.append(f"ran:        at most {summary.max_concurrent_trials} trial(s) at once")
    if best is not None:
        values = "  ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in best.params.items())
        lines.append(f"best:       {best.name}  {summary.metric}={best.metric(summary.metric):.4g}"
                     f"  {values}")
        if best.checkpoint:
            lines.append(f"checkpoint: {best.checkpoint}  (lavender evaluate --adapter <it>, "
                         "lavender export <it>)")
        lines.append(f"preset:     {layout.best_preset}  (lavender train --preset <it>)")
    if summary.rejects_dir is not None:
        lines.append(summarise_rejects(summary.rejects_dir))
    if summary.interrupted:
        storage, name = layout.experiment_dir.rstrip("/").rsplit("/", 1)
        lines.append(f"interrupted: continue with `lavender tune --resume --set "
                     f"train.storage_path={storage} --set train.run_name={name}`")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ shared targets
def shared_targets(cfg: LavenderConfig, layout: TuneLayout, space: SearchSpace) -> dict[str, Any]:
    """Extract the SD targets once (`tune.targets`) and return the `pipeline.*` overrides that
    point the trials at them; `{}` when trials use the pipeline as configured."""
    mode = cfg.tune.targets
    if not shares_targets(cfg):
        return {}
    per_trial = [k for k in space.keys if k.startswith(("sd.", "data."))]
    if mode == "precomputed" and per_trial:
        raise ConfigError(
            f"tune.targets=precomputed shares one set of SD targets, but the search space "
            f"changes {', '.join(per_trial)}: use tune.targets=cache (targets per SD config, "
            "extracted where missing) or stream"
        )
    summary = extract_to_cache(cfg, layout.cache_dir)
    print(
        f"shared SD targets: {summary.targets_dir} ({summary.written} new, "
        f"{summary.cached_before} cached; rejects: {format_counts(summary.rejects)})",
        flush=True,
    )
    if mode == "cache":
        return {"pipeline.mode": "cache", "pipeline.cache_path": layout.cache_dir}
    return {
        "pipeline.mode": "precomputed",
        "pipeline.precomputed_path": summary.targets_dir,
        "pipeline.precomputed_format": "parquet",
    }


# ----------------------------------------------------------------------------------- the run
class TrialProgress(tune.Callback):
    """Moves the command's progress display (`shown`, set by `run_tune`) to the trials finished
    (terminated or errored) after every step of Tune's loop; Tune's own status table is off
    with a quiet console, and its banner goes to the log (`console.stdout_to_log`). The display
    is a class attribute: the callback pickles with the experiment without it and, restored by
    `Tuner.restore`, shows on the resuming command's display."""

    shown: console.Progress | None = None

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        shown = TrialProgress.shown
        if shown is None:
            return
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        errors = sum(t.status == "ERROR" for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        fields = [f"{running} running"] if running else []
        fields += [f"{errors} errored"] if errors else []
        shown.set(done, fields=fields)


def build_tuner(
    cfg: LavenderConfig,
    layout: TuneLayout,
    space: SearchSpace,
    trainable: Any,
    reports: int,
    limit: int,
    callbacks: list[Any] | None,
):
    """A new `Tuner`: seeded search, ASHA on `tune.metric` over `reports` reports per trial,
    at most `limit` trials at once, deterministic trial names, `TrialProgress` after
    `callbacks`; Tune's own status output is off with a quiet console."""
    t = cfg.tune
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=reports,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=TUNE_OBJECTIVE,  # tune.metric, a report without a matched word last
            mode=t.mode,
            scheduler=scheduler,
            # the generator caps concurrency itself (TuneConfig.max_concurrent_trials needs a
            # Searcher and is ignored with a SearchGenerator)
            search_alg=BasicVariantGenerator(random_state=t.seed, max_concurrent=limit),
            num_samples=t.num_samples,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=cfg.train.run_name,
            storage_path=layout.experiment_dir.rsplit("/", 1)[0],
            callbacks=[*(callbacks or []), TrialProgress()],
            verbose=0 if console.quiet() else None,
        ),
    )


def run_tune(
    cfg: LavenderConfig,
    resume: bool = False,
    callbacks: list[Any] | None = None,
    address: str | None = None,
) -> TuneSummary:
    """Run (or with `resume` continue) the search of `cfg.tune`; see the module docstring.
    `callbacks` are Ray Tune callbacks of the experiment (a resumed experiment keeps its own);
    `address` is the Ray to use when none is connected (`resources.connect`)."""
    cfg = absolute_paths(cfg)
    check_sources(cfg)
    check_trackers(cfg)  # train.report_to: once here, not in every trial
    space = parse_search_space(cfg.tune.search_space, cfg.to_dict())
    reports = check_tune_config(cfg)
    layout = layout_of(cfg)
    check_experiment(cfg, layout, resume)  # before Ray starts: a refusal costs no start-up
    connect(cfg, "tune", address)
    nodes = cluster_nodes()
    check_storage(cfg, nodes)
    check_placement(cfg, nodes)
    require_state_api()
    if not resume:
        write_text(layout.config, cfg.to_yaml())

    overrides = {"train.storage_path": layout.runs_dir, **shared_targets(cfg, layout, space)}
    base = apply_overrides(cfg.to_dict(), overrides)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base), dict(cfg.tune.trial_resources)
    )
    if resume:
        limit = None
        tuner = tune.Tuner.restore(layout.experiment_dir, trainable=trainable)
    else:
        limit = max_concurrent_trials(cfg, nodes)
        tuner = build_tuner(cfg, layout, space, trainable, reports, limit, callbacks)
    total = space.trial_count(cfg.tune.num_samples)
    with (console.progress("tune", total, unit="trials", every_s=0.0) as shown,
          console.stdout_to_log()):
        TrialProgress.shown = shown
        try:
            tuner.fit()
        finally:
            TrialProgress.shown = None
    return write_outputs(cfg, layout, space, limit)


def trial_rows(layout: TuneLayout, max_steps: int) -> list[TrialRow]:
    """One `TrialRow` per trial of the Tune experiment of `layout`, by name; checkpoints as
    full paths or URIs under the trial's Ray Train run (`runs/<trial>`)."""
    rows = []
    for trial in ExperimentAnalysis(layout.experiment_dir).trials:
        metrics = dict(trial.last_result or {})
        checkpoint = metrics.get(CHECKPOINT_PATH_KEY)
        rows.append(
            TrialRow(
                name=str(trial),
                status=trial_status(trial.status, metrics, max_steps),
                params=dict(trial.config or {}),
                metrics=metrics,
                checkpoint=(
                    checkpoint_location(f"{layout.runs_dir}/{trial}", checkpoint)
                    if checkpoint
                    else None
                ),
            )
        )
    return sorted(rows, key=lambda r: r.name)


def write_outputs(
    cfg: LavenderConfig, layout: TuneLayout, space: SearchSpace, limit: int | None
) -> TuneSummary:
    """Trials table (Markdown + CSV) and, when a trial reported the metric, the best preset."""
    rows = trial_rows(layout, cfg.train.max_steps)
    metric = cfg.tune.metric
    best = best_trial(rows, metric, cfg.tune.mode)
    name = best.name if best else None
    write_text(layout.table_md, trials_markdown(rows, space.keys, metric, name))
    write_text(layout.table_csv, trials_csv(rows, space.keys, metric, name))
    if best is not None:
        write_text(layout.best_preset, best_preset(cfg, best, metric, layout.experiment_dir))
    expected = space.trial_count(cfg.tune.num_samples)
    interrupted = len(rows) < expected or any(r.status == "unfinished" for r in rows)
    shown = best or (rows[0] if rows else None)
    rejects_dir = (cfg.data.rejects_path or f"{layout.runs_dir}/{shown.name}/rejects"
                   if shown else None)  # fmt: skip
    return TuneSummary(layout, rows, best, metric, expected, interrupted, limit, rejects_dir)
