"""Rank 0's side of experiment tracking: `RunTracker` (`metrics.jsonl`, the attention PNGs)
and one sink per tracker of `train.report_to` (TensorBoard, MLflow, W&B), which join the
tracker runs the driver opened (`train.tracking`: the plan, the checks, `tracking.json`).

    tracker = RunTracker.open(cfg, state) # rank 0 (`train.worker`), handed to the `Reporter`,
    tracker.report(metrics)               # the one exit of a worker's metrics: every report,
    tracker.pictures(step, samples)       # every train.attention_png_every steps,
    tracker.close()                       # after the last report
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from lavender_ray.config import LavenderConfig
from lavender_ray.pictures import ProbeSample, render_probe
from lavender_ray.runs import (
    TENSORBOARD_DIR,
    TRACKING_FILE,
    attention_report_dir,
    metrics_path,
    run_dir_of,
)
from lavender_ray.storage import (
    append_text,
    copy_folder,
    exists,
    local_path,
    read_text,
    write_bytes,
    write_text,
)

log = logging.getLogger(__name__)
from lavender_ray.train.tracking import TrackingPlan, config_params


class RunTracker:
    """Rank 0's tracking: `metrics.jsonl`, the attention PNGs and a sink per tracker."""

    def __init__(self, run_dir: str, sinks: list[Any]) -> None:
        self.run_dir = run_dir
        self.sinks = sinks

    @classmethod
    def open(cls, cfg: LavenderConfig, state: Any) -> RunTracker:
        """Rank 0's tracker for the run of `cfg`, restored at `state` (`reporting.TrainState`):
        `metrics.jsonl` rewritten to the history up to `state.step` (empty for a fresh start),
        then each tracker of `train.report_to` joined (`tracking.json`, from the driver)."""
        run_dir = run_dir_of(cfg)
        lines = "".join(metric_line(m) for m in state.history)
        write_text(metrics_path(run_dir), lines)
        if not cfg.train.report_to:
            return cls(run_dir, [])
        saved = read_text(f"{run_dir}/{TRACKING_FILE}")
        if saved is None:
            raise RuntimeError(
                f"train.report_to={cfg.train.report_to} but {run_dir}/{TRACKING_FILE} does not "
                "exist: start training with lavender_ray.train.launch.train, which opens the "
                "tracker runs"
            )
        plan = TrackingPlan(**json.loads(saved))
        sinks = [SINKS[name](cfg, run_dir, plan, state.step) for name in cfg.train.report_to]
        return cls(run_dir, sinks)

    def report(self, metrics: dict[str, float]) -> None:
        """One report: a line of `metrics.jsonl`, then every tracker, at `metrics["step"]`."""
        append_text(metrics_path(self.run_dir), metric_line(metrics))
        step = int(metrics["step"])
        for sink in self.sinks:
            sink.metrics(step, metrics)

    def pictures(self, step: int, samples: list[ProbeSample]) -> None:
        """The attention PNGs of `step` (`attention_pngs.probe_batch`) into
        `<run>/report/step_<N>/<sample>.png` and to every tracker."""
        named = [(sample.record_id, render_probe(sample)) for sample in samples]
        for name, image in named:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            write_bytes(f"{self.run_dir}/{attention_report_dir(step)}/{name}.png",
                        buffer.getvalue())
        for sink in self.sinks:
            sink.pictures(step, named)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def metric_line(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics) + "\n"


class TensorBoardSink:
    """`<run>/tensorboard/` through torch's `SummaryWriter` (flushed at every report). On object
    storage the events are written locally and the folder is copied up after each flush."""

    def __init__(self, cfg: LavenderConfig, run_dir: str, plan: TrackingPlan, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.target = f"{run_dir}/{TENSORBOARD_DIR}"
        local = local_path(self.target)
        self.upload = local is None
        if local is None:
            local = tempfile.mkdtemp(prefix="lavender-tensorboard-")
            if exists(self.target):
                copy_folder(self.target, local)
        self.local = local
        earlier = os.path.isdir(local) and any(
            name.startswith("events.out.tfevents") for name in os.listdir(local)
        )
        # a restart drops the events after the step it restarts from (they are trained again)
        self.writer = SummaryWriter(local, purge_step=step + 1 if earlier else None)
        if not earlier:
            text = "\n".join(f"    {k} = {v}" for k, v in config_params(cfg).items())
            self.writer.add_text("config", text, 0)

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.flush()

    def pictures(self, step: int, named: list[tuple[str, Image.Image]]) -> None:
        for name, image in named:
            self.writer.add_image(f"attention/{name}", np.asarray(image.convert("RGB")), step,
                                  dataformats="HWC")
        self.flush()

    def flush(self) -> None:
        self.writer.flush()
        if self.upload:
            copy_folder(self.local, self.target)

    def close(self) -> None:
        self.writer.close()
        if self.upload:
            copy_folder(self.local, self.target)


class MlflowSink:
    """The driver's MLflow run (`plan.mlflow_run_id`): metrics by step, PNGs as artifacts."""

    def __init__(self, cfg: LavenderConfig, run_dir: str, plan: TrackingPlan, step: int) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(plan.mlflow_uri)
        self.run_id = plan.mlflow_run_id

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def pictures(self, step: int, named: list[tuple[str, Image.Image]]) -> None:
        for name, image in named:
            self.client.log_image(self.run_id, image,
                                  artifact_file=f"{attention_report_dir(step)}/{name}.png")

    def close(self) -> None:
        """The driver ends the run (`finish_tracking`) after adding curves.png."""


class WandbSink:
    """The W&B run `plan.wandb_id` (resumed if it exists), in the driver's mode and folder."""

    def __init__(self, cfg: LavenderConfig, run_dir: str, plan: TrackingPlan, step: int) -> None:
        import wandb

        self.wandb = wandb
        if plan.wandb_dir:
            os.makedirs(plan.wandb_dir, exist_ok=True)
        self.run = wandb.init(
            project=plan.wandb_project, entity=plan.wandb_entity, name=cfg.train.run_name,
            id=plan.wandb_id, resume="allow", mode=plan.wandb_mode, dir=plan.wandb_dir,
            config=config_params(cfg),
            settings=wandb.Settings(silent=True),  # the driver said where the run goes
        )

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def pictures(self, step: int, named: list[tuple[str, Image.Image]]) -> None:
        self.run.log({f"attention/{name}": self.wandb.Image(image) for name, image in named},
                     step=step)

    def close(self) -> None:
        self.run.finish()


SINKS = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink, "wandb": WandbSink}
