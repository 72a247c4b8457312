"""The driver side of training: datasets + `TorchTrainer` from the typed config, then `fit()`.

    summary = train(load_config("demo"))      # on the connected (or an embedded local) Ray

Outputs go to `<train.storage_path>/<train.run_name>/` (`lavender_ray.runs`): `config.yaml`,
`rejects/`, Ray Train's `checkpoint_step*/` folders (each holds every rank's DeepSpeed state and
`export/`, the verified PEFT adapter + Aligner + config) and, at the end, `adapter/`: the last
checkpoint's export at a stable path. `metrics.jsonl` grows at every report, `report/` gets the
attention PNGs and `curves.png`, and the trackers of `train.report_to` their runs
(`train.tracking`: checked before anything starts, opened around `fit()`).

A run is never reused by accident: a run name that exists is refused unless the run is resumed
(`resume=True`, `lavender train --resume`), and a resumed run must have the config it was started
with (the differing keys are named); its `config.yaml` is never overwritten. Ctrl-C stops a run
at its last checkpoint (`TrainingInterrupted` says which, and the command that continues it).
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
from ray.data import DataContext, ExecutionOptions
from ray.train.torch import TorchTrainer

from lavender_ray.config import (
    CONFIG_FILE,
    LavenderConfig,
    absolute_paths,
    run_paths,
)
from lavender_ray.pipeline.dataset import build_train_dataset
from lavender_ray.pipeline.preflight import check_sources
from lavender_ray.placement import check_placement, check_shared_folders, cluster_nodes
from lavender_ray.rejects import count_rejects, summarise_rejects
from lavender_ray.resources import connect
from lavender_ray.runs import (
    ADAPTER_DIR,
    EXPORT_DIR,
    check_run,
    checkpoint_location,
    checkpoint_name,
    checkpoint_steps,
    is_saved_run,
    latest_complete_checkpoint,
    metrics_path,
    run_dir_of,
)
from lavender_ray.storage import absolute, copy_folder, is_remote, read_text, write_text
from lavender_ray.train.entry import run_worker
from lavender_ray.train.progress import follow_training
from lavender_ray.train.tracking import check_trackers, tracked
from lavender_ray.watchdog import stall_watchdog


@dataclass
class TrainSummary:
    run_dir: str
    checkpoint: str | None
    adapter: str | None  # <run>/adapter: the last checkpoint's verified export
    metrics: dict[str, Any]
    rejects: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    rejects_dir: str = ""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `fit()`. Ray Train's own SIGINT handler aborts the run and its `ray.get`
    then ends the driver with `SystemExit`; this takes its place, naming the run's last
    checkpoint and the command that continues it (the CLI prints it, exit code 130)."""

    def __init__(self, cfg: LavenderConfig, run_dir: str) -> None:
        t = cfg.train
        where = resume_point(cfg, run_dir, latest_complete_checkpoint(run_dir, t.num_workers))
        super().__init__(f"run {t.run_name!r} stopped; {where}. Continue it with "
                         f"{resume_command(cfg)}")


def resume_command(cfg: LavenderConfig) -> str:
    """The command that continues the run of `cfg`, for people."""
    t = cfg.train
    return (f"`lavender train --resume --set train.storage_path={t.storage_path} --set "
            f"train.run_name={t.run_name}`")


def failure_note(cfg: LavenderConfig) -> str | None:
    """What a run that failed can do next (`lavender train` adds it to the error): the run's
    last checkpoint and the command that continues it; without a checkpoint the command starts
    it again with corrected values (`runs.check_run`). None when the run never started, or its
    storage cannot be read (the error itself is what matters)."""
    run_dir = run_dir_of(cfg)
    try:
        if read_text(f"{run_dir}/{CONFIG_FILE}") is None:
            return None
        step = latest_complete_checkpoint(run_dir, cfg.train.num_workers)
    except OSError:  # pyarrow's filesystems raise OSError subclasses
        return None
    fix = " with your corrected --preset or --set values" if step is None else ""
    return (f"run {cfg.train.run_name!r} failed; {resume_point(cfg, run_dir, step)}. Once the "
            f"cause is fixed, {resume_command(cfg)}{fix} continues it")


def fit(trainer: TorchTrainer, cfg: LavenderConfig, run_dir: str) -> ray.train.Result:
    """`trainer.fit()`; Ctrl-C raises `TrainingInterrupted`. Ray Train leaves its SIGINT handler
    installed after `fit()` (a later Ctrl-C would abort a finished run and exit the process):
    the one before it is put back."""
    before = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    except SystemExit as err:
        raise TrainingInterrupted(cfg, run_dir) from err
    finally:
        if threading.current_thread() is threading.main_thread():  # not in a Tune trial
            signal.signal(signal.SIGINT, before)


def resume_point(cfg: LavenderConfig, run_dir: str, step: int | None) -> str:
    """Where the run in `run_dir` goes on from when resumed, for people: its newest complete
    checkpoint (`step`, `runs.latest_complete_checkpoint`; `reporting.restore` loads it)."""
    if step is None:
        return "it has no complete checkpoint (it starts again at step 0)"
    return (f"its last checkpoint is {run_dir}/{checkpoint_name(step)} (step {step} of "
            f"{cfg.train.max_steps})")


def describe(summary: TrainSummary) -> str:
    """Where a run's outputs went, for people."""
    keys = ["step", "loss/total", "loss/lm", "loss/att", "align/matched_words", "records"]
    metrics = "  ".join(f"{k}={summary.metrics[k]:.4g}" for k in keys if k in summary.metrics)
    return "\n".join(
        [
            f"run:        {summary.run_dir}",
            f"checkpoint: {summary.checkpoint}",
            f"adapter:    {summary.adapter}  (PEFT adapter + aligner.safetensors + config.yaml)",
            f"metrics:    {metrics}",
            summarise_rejects(summary.rejects_dir),
        ]
    )


def local_paths(cfg: LavenderConfig) -> dict[str, str]:
    """Config key -> value of every path the run's workers, actors and tasks read or write, for
    those that are local (a URI other than file:// is visible everywhere)."""
    return {key: value for key, value in run_paths(cfg).items() if not is_remote(value)}


def check_storage(cfg: LavenderConfig, nodes: list[dict[str, float]]) -> None:
    """A run spread over several nodes (`placement.spans_nodes`: `nodes` are the alive ones)
    needs every path its workers, actors and tasks use on storage every node sees: a URI, or a
    shared mount declared with `train.shared_storage`."""
    local = local_paths(cfg)
    if local:
        listed = ", ".join(f"{key}={value!r}" for key, value in local.items())
        wants_gpus = cfg.train.use_gpu or cfg.pipeline.sd_num_gpus > 0
        check_shared_folders(cfg, nodes, f"the local paths {listed}", wants_gpus,
                             alternative=", or use URIs (s3://bucket/prefix, gs://...)")


def build_trainer(
    cfg: LavenderConfig, datasets: dict[str, Any], callbacks: list[Any] | None = None
):
    """The `TorchTrainer` for `cfg`: workers, resources, accelerator type, failure handling;
    `callbacks` go to its `RunConfig` (Ray Tune's `TuneReportCallback` in a Tune trial)."""
    t = cfg.train
    resources: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    scaling = ray.train.ScalingConfig(
        num_workers=t.num_workers,
        use_gpu=t.use_gpu,
        resources_per_worker=resources,
        accelerator_type=t.accelerator,
    )
    run_config = ray.train.RunConfig(
        name=t.run_name,
        storage_path=absolute(t.storage_path),
        failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
        callbacks=callbacks,
    )
    return TorchTrainer(
        run_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
        dataset_config=ingest_config(),
    )


def ingest_config():
    """Ray Train's `DataConfig` with the ingest options it would copy from the DataContext,
    less the deprecated `exclude_resources` (its default copy warns in every run)."""
    ctx = DataContext.get_current().execution_options
    options = ExecutionOptions(
        resource_limits=ctx.resource_limits,
        preserve_order=ctx.preserve_order,
        verbose_progress=ctx.verbose_progress,
    )
    return ray.train.DataConfig(execution_options=options)


def finished_run(cfg: LavenderConfig, run_dir: str) -> TrainSummary | None:
    """The summary of the run in `run_dir` when it has finished (a checkpoint at
    `train.max_steps` and its `adapter/`), read from its files; None while it has steps to go."""
    steps = checkpoint_steps(run_dir)
    adapter = f"{run_dir}/{ADAPTER_DIR}"
    if not steps or steps[-1] < cfg.train.max_steps or not is_saved_run(adapter):
        return None
    lines = (read_text(metrics_path(run_dir)) or "").splitlines()
    rejects_dir = cfg.data.rejects_path or f"{run_dir}/rejects"
    return TrainSummary(
        run_dir=run_dir,
        checkpoint=f"{run_dir}/{checkpoint_name(steps[-1])}",
        adapter=adapter,
        metrics=json.loads(lines[-1]) if lines else {},
        rejects=count_rejects(rejects_dir),
        resumed=True,
        rejects_dir=rejects_dir,
    )


def train(
    cfg: LavenderConfig, callbacks: list[Any] | None = None, resume: bool | None = False,
    check_resources: bool = True, address: str | None = None,
) -> TrainSummary:
    """Build the streaming pipeline and the trainer, train, and say where everything went.

    The run folder is checked first (`check_run`: `resume`), before Ray starts; a run resumed
    with `resume=True` that has finished (`finished_run`) returns its summary without starting
    anything. Then on the connected Ray (else `address`, else a local one sized to the run,
    `resources.connect`) storage, placement and resources are checked before anything starts;
    work waiting for resources longer than `train.stall_timeout_s` is reported.
    `check_resources=False` skips the resource plan: a Tune trial, whose experiment's plan
    counted it among the trials that share the cluster."""
    cfg = absolute_paths(cfg)
    check_sources(cfg)
    run_dir = run_dir_of(cfg)
    resumed = check_run(cfg, run_dir, resume)
    finished = finished_run(cfg, run_dir) if resume else None
    if finished is not None:
        print(f"run {cfg.train.run_name} has finished (train.max_steps={cfg.train.max_steps} "
              "reached): nothing to train; another train.run_name starts a new run", flush=True)
        return finished
    check_trackers(cfg)  # train.report_to: packages, MLflow server, W&B mode
    if check_resources:
        connect(cfg, "train", address)
    nodes = cluster_nodes()
    check_storage(cfg, nodes)
    check_placement(cfg, nodes)
    start = latest_complete_checkpoint(run_dir, cfg.train.num_workers) if resumed else None
    if resumed:
        print(f"resuming run {cfg.train.run_name}: {resume_point(cfg, run_dir, start)}",
              flush=True)
    else:
        print(f"new run {cfg.train.run_name}: {run_dir}", flush=True)
    rejects_dir = cfg.data.rejects_path or f"{run_dir}/rejects"
    if start is None:  # a new run, or one that starts again at step 0 (`check_run`)
        write_text(f"{run_dir}/{CONFIG_FILE}", cfg.to_yaml())
    dataset = build_train_dataset(cfg, rejects_dir)
    with stall_watchdog(cfg.train.stall_timeout_s), follow_training(
            run_dir, cfg.train.max_steps, from_step=start or 0):
        with tracked(cfg, run_dir, resumed):  # tracker runs; curves.png at the end
            result = fit(build_trainer(cfg, {"train": dataset}, callbacks), cfg, run_dir)
    checkpoint = (
        checkpoint_location(run_dir, result.checkpoint.path) if result.checkpoint else None
    )
    adapter = None
    if checkpoint is not None:
        adapter = f"{run_dir}/{ADAPTER_DIR}"
        copy_folder(f"{checkpoint}/{EXPORT_DIR}", adapter)
    return TrainSummary(
        run_dir=run_dir,
        checkpoint=checkpoint,
        adapter=adapter,
        metrics=dict(result.metrics or {}),
        rejects=count_rejects(rejects_dir),
        resumed=resumed,
        rejects_dir=rejects_dir,
    )
