"""The driver side of training: datasets + `TorchTrainer` from the typed config, then `fit()`.

    summary = train(load_config("demo"))      # on the connected (or an embedded local) Ray

Outputs go to `<train.storage_path>/<train.run_name>/`: `config.yaml`, `rejects/`, Ray Train's
`checkpoint_step*/` folders (each holds every rank's DeepSpeed state and `export/`, the verified
PEFT adapter + Aligner + config). Re-running with the same run name and storage path resumes
from the latest checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lavender_ray.config import ConfigError, LavenderConfig
from lavender_ray.data.rejects import count_rejects
from lavender_ray.train.placement import check_placement, cluster_nodes
from lavender_ray.train.worker import EXPORT_DIR, train_fn_per_worker


@dataclass
class TrainSummary:
    run_dir: str
    checkpoint: str | None
    export: str | None
    metrics: dict[str, Any]
    rejects: dict[str, int] = field(default_factory=dict)


def describe(summary: TrainSummary) -> str:
    """Where a run's outputs went, for people."""
    keys = ["step", "loss/total", "loss/lm", "loss/att", "align/matched_words", "records"]
    metrics = "  ".join(f"{k}={summary.metrics[k]:.4g}" for k in keys if k in summary.metrics)
    rejects = sum(summary.rejects.values())
    return "\n".join(
        [
            f"run:        {summary.run_dir}",
            f"checkpoint: {summary.checkpoint}",
            f"adapter:    {summary.export}  (PEFT adapter + aligner.safetensors + config.yaml)",
            f"metrics:    {metrics}",
            f"rejects:    {rejects} {summary.rejects or ''} under {summary.run_dir}/rejects",
        ]
    )


def run_dir_of(cfg: LavenderConfig) -> str:
    """`<storage_path>/<run_name>`; a local storage path is made absolute."""
    storage = cfg.train.storage_path
    if "://" not in storage:
        storage = os.path.abspath(storage)
    return f"{storage.rstrip('/')}/{cfg.train.run_name}"


def check_storage(cfg: LavenderConfig, alive_nodes: int) -> None:
    """A run spread over several nodes needs storage every node sees (NFS path or URI)."""
    storage = cfg.train.storage_path
    if alive_nodes > 1 and "://" not in storage and not cfg.train.shared_storage:
        raise ConfigError(
            f"train.storage_path={storage!r} is a local path but the cluster has {alive_nodes} "
            "nodes: checkpoints written by workers on other nodes would be lost. Use a URI "
            "(s3://bucket/prefix, gs://...) or a shared mount and set train.shared_storage=true"
        )


def build_trainer(
    cfg: LavenderConfig, datasets: dict[str, Any], callbacks: list[Any] | None = None
):
    """The `TorchTrainer` for `cfg`: workers, resources, accelerator type, failure handling;
    `callbacks` go to its `RunConfig` (Ray Tune's `TuneReportCallback` in a Tune trial)."""
    import ray.train
    from ray.train.torch import TorchTrainer

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
    storage = cfg.train.storage_path
    run_config = ray.train.RunConfig(
        name=t.run_name,
        storage_path=storage if "://" in storage else os.path.abspath(storage),
        failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
        callbacks=callbacks,
    )
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
    )


def train(cfg: LavenderConfig, callbacks: list[Any] | None = None) -> TrainSummary:
    """Build the streaming pipeline and the trainer, train, and say where everything went.
    Storage and placement (`placement.check_placement`) are checked before anything starts."""
    import ray

    from lavender_ray.data.pipeline import build_train_dataset

    if not ray.is_initialized():
        ray.init()
    nodes = cluster_nodes()
    check_storage(cfg, alive_nodes=len(nodes))
    check_placement(cfg, nodes)
    run_dir = run_dir_of(cfg)
    rejects_dir = cfg.data.rejects_path or f"{run_dir}/rejects"
    if "://" not in run_dir:
        cfg.save(run_dir)
    dataset = build_train_dataset(cfg, rejects_dir)
    result = build_trainer(cfg, {"train": dataset}, callbacks).fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    return TrainSummary(
        run_dir=run_dir,
        checkpoint=checkpoint,
        export=f"{checkpoint}/{EXPORT_DIR}" if checkpoint else None,
        metrics=dict(result.metrics or {}),
        rejects=count_rejects(rejects_dir),
    )
