"""Where a train worker's metrics and checkpoints leave it: one `Reporter` per worker.

    state = restore(engine, rank, cfg)                  # the newest checkpoint, or fresh
    reporter = Reporter(cfg, engine, module, scheduler, rank, state)
    for batch in reporter.timed(batches):               # time spent waiting counts as data wait
        ...forward...
        if not reporter.finite(out.metrics): continue   # NaN/inf: stop, or skip on every rank
        ...backward, step...
        reporter.micro_batch(out.metrics, len(batch))   # reports and checkpoints when due
        if reporter.done: break

Every trained micro-batch's metrics go in; after each optimizer step (`train.grad_accum_steps`
micro-batches) the reporter decides what is due (`schedule.report_due`). Every
`train.report_every` steps, at every multiple of `train.checkpoint_every` and at the last step,
the means since the last report, with the step, the records trained on so far (all ranks), the
micro-batches skipped, the data wait, the step time and the learning rate, go to
`ray.train.report` from every rank (Ray Train keeps rank 0's) and to the console from rank 0.
At the checkpoint steps every rank also saves its DeepSpeed state and rank 0 the verified export
into the reported checkpoint (the layout of `lavender_ray.runs`): checkpoints keep their own
schedule, a report carries each.
This is the one place metrics leave a step: rank 0's `trackers.RunTracker` (`tracker`) gets
each report (`<run>/metrics.jsonl` and the trackers of `train.report_to`) and, every
`train.attention_png_every` steps, the attention pictures every rank draws of its micro-batch
(`attention_pngs.probe_batch`; all ranks, as ZeRO-3 gathers parameters in the forward).

Health guards: a loss term that is NaN or inf on any rank (`finite`) stops the run on every rank
with `NonFiniteLoss` (`train.on_nonfinite=stop`), or leaves the micro-batch out on every rank and
counts it (`skip`); reported metrics are never filtered. When `align/matched_words` is 0 in each
of the first reports (or every report of a shorter run), rank 0 warns once that the alignment
term is off (the run is plain SFT).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray.train
import torch

from lavender_ray.config import LavenderConfig
from lavender_ray.runs import (
    DS_TAG,
    EXPORT_DIR,
    METRICS_FILE,
    STATE_FILE,
    checkpoint_name,
    checkpoint_step,
    latest_complete_checkpoint,
    run_dir_of,
)
from lavender_ray.train.attention_pngs import pictures_due, probe_batch
from lavender_ray.train.export import export_trained
from lavender_ray.train.schedule import report_due
from lavender_ray.train.step import LavenderModule, TrainBatch
from lavender_ray.train.trackers import RunTracker

# Progress goes through logging: Ray Train patches `print` in its workers to both print and log,
# which shows every printed line twice in the driver's output.
log = logging.getLogger(__name__)
T = TypeVar("T")
PROGRESS_KEYS = ("loss/total", "loss/lm", "loss/att", "align/matched_words", "time/step_s")
LOSS_TERMS = ("loss/total", "loss/lm", "loss/att")
PLAIN_SFT_REPORTS = 2  # reports without a matched word before the run is called plain SFT
MAX_SKIPS_IN_A_ROW = 20  # non-finite micro-batches in a row after which skipping cannot help
PLAIN_SFT_WARNING = (
    "align/matched_words was 0 in every report up to step %d: no word of the "
    "VLM matched an SD word, so loss/att is 0 and the run is plain SFT. Causes: "
    "loss.word_source=predicted takes the words the model predicts, which an untrained model "
    "rarely gets right (loss.word_source=label takes the answer's own words); "
    "loss.matching=exact needs identical words (loss.matching=root also matches 'dogs' to "
    "'dog'); the SD words come from each record's target_text, which must share words with the "
    "answer; loss.skip_stop_words leaves stop words out. This run: loss.word_source=%s, "
    "loss.matching=%s, loss.skip_stop_words=%s."
)


class NonFiniteLoss(RuntimeError):
    """A micro-batch's loss is NaN or inf (`train.on_nonfinite`)."""


@dataclass
class TrainState:
    """Where a worker stands: optimizer steps done, records it trained on, rank 0's reported
    metrics so far, the step it resumed from (-1: a fresh run) and the passes over the data
    begun (`epoch`: 1 in the first; a resumed run begins a new one)."""

    step: int = 0
    records: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = -1
    skipped: int = 0  # micro-batches left out for a non-finite loss (train.on_nonfinite=skip)
    epoch: int = 0


class MetricMeter:
    """Means of step metrics between two reports."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value)
        self.steps += 1

    def means(self) -> dict[str, float]:
        out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        self.sums.clear()
        self.steps = 0
        return out


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum of `value` over ranks (a plain value without a process group). The tensor lives on
    the engine's `device`: with `use_gpu`, Ray Train's process group is NCCL only, which has no
    CPU tensors."""
    if not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())


def average_norm_statistics(module: torch.nn.Module, device: torch.device) -> None:
    """Average BatchNorm running statistics over ranks (`aligner.norm=batch`). DeepSpeed, unlike
    DDP, never re-broadcasts buffers, so each rank's statistics cover only its own shard; saved
    ones would be rank 0's. Called by every rank before a checkpoint."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return
    world = torch.distributed.get_world_size()
    for norm in module.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) and norm.track_running_stats:
            for stat in (norm.running_mean, norm.running_var):
                summed = stat.detach().to(device=device, dtype=torch.float32)
                torch.distributed.all_reduce(summed)
                stat.copy_(summed / world)


def format_metrics(metrics: dict[str, float], max_steps: int) -> str:
    """One progress line: `step 10/30  loss/total 1.234  ...`."""
    parts = [f"{k} {metrics[k]:.4g}" for k in PROGRESS_KEYS if k in metrics]
    return f"step {int(metrics['step'])}/{max_steps}  " + "  ".join(parts)


def restore(engine: Any, rank: int, cfg: LavenderConfig) -> TrainState:
    """The state of the run's newest checkpoint (DeepSpeed state loaded into `engine`), or a
    fresh one when there is none. Ray Train's `get_checkpoint()` is the last one it registered
    (after a worker failure, or from its snapshot when the run is resumed); the run folder can
    hold a newer complete one (`runs.latest_complete_checkpoint`) when the driver was stopped
    (Ctrl-C) before Ray registered it, or before it wrote any snapshot."""
    checkpoint = ray.train.get_checkpoint()
    registered = checkpoint_step(checkpoint.path) if checkpoint is not None else None
    run_dir = run_dir_of(cfg)
    newest = latest_complete_checkpoint(run_dir, cfg.train.num_workers)
    if newest is not None and (registered is None or newest > registered):
        checkpoint = ray.train.Checkpoint(f"{run_dir}/{checkpoint_name(newest)}")
    if checkpoint is None:
        return TrainState()
    history: list[dict[str, float]] = []
    with checkpoint.as_directory() as ckpt_dir:
        # the checkpoint holds the trainable weights only: the frozen base comes from the
        # model's own weights, so the module load cannot be strict
        engine.load_checkpoint(ckpt_dir, tag=DS_TAG, load_module_strict=False)
        with open(os.path.join(ckpt_dir, STATE_FILE.format(rank=rank))) as f:
            saved = json.load(f)
        if rank == 0:
            with open(os.path.join(ckpt_dir, METRICS_FILE)) as f:
                history = [json.loads(line) for line in f]
    if rank == 0:
        log.info("resumed from %s at step %d", checkpoint.path, saved["step"])
    return TrainState(
        saved["step"], saved["records"], history, resumed_from=saved["step"],
        skipped=saved.get("skipped", 0), epoch=saved.get("epoch", 0),
    )


class Reporter:
    """The one exit of a worker's metrics and checkpoints (see the module docstring)."""

    def __init__(
        self,
        cfg: LavenderConfig,
        engine: Any,
        module: LavenderModule,
        scheduler: Any,
        rank: int,
        state: TrainState,
        tracker: RunTracker | None = None,
    ) -> None:
        self.cfg, self.engine, self.module, self.scheduler = cfg, engine, module, scheduler
        self.tracker = tracker  # rank 0's: metrics.jsonl, attention PNGs, train.report_to
        self.rank = rank
        self.state = state
        self.meter = MetricMeter()
        self.micro_batches = 0
        self.wait_s = 0.0
        self.first_batch_s: float | None = None  # this process's wait for its first batch
        self.last_report = time.perf_counter()
        self.last_report_step = state.step
        self.skips_in_a_row = 0
        self.first_matched: list[float] = []  # align/matched_words of this worker's first reports

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.state.step

    @property
    def done(self) -> bool:
        return self.state.step >= self.cfg.train.max_steps

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """`batches`, counting the time spent waiting for each as data wait (the first one's
        also on its own: the pipeline's start-up, SD actors loading)."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            waited = time.perf_counter() - start
            self.wait_s += waited
            if self.first_batch_s is None:
                self.first_batch_s = waited
            yield batch

    def finite(self, metrics: dict[str, float]) -> bool:
        """Whether to train this micro-batch: its loss terms (`LOSS_TERMS`) are finite on every
        rank. Every rank calls this after its forward; one all-reduce makes them decide alike.
        Otherwise, with `train.on_nonfinite=stop` every rank raises `NonFiniteLoss` naming the
        step and the loss terms; with `skip` every rank returns False, the caller leaves the
        micro-batch out (no backward, no optimizer step: nothing of it reaches the weights or
        the optimizer state), and it is counted in `train/skipped_steps`. A skipped
        micro-batch does not count towards the step: under gradient accumulation the next
        micro-batch takes its place. `MAX_SKIPS_IN_A_ROW` skips in a row stop the run."""
        bad = [k for k in LOSS_TERMS if k in metrics and not math.isfinite(metrics[k])]
        ranks = int(all_reduce_sum(float(bool(bad)), self.engine.device))
        if ranks == 0:
            self.skips_in_a_row = 0
            return True
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        terms = ", ".join(f"{k}={metrics[k]:.4g}" for k in LOSS_TERMS if k in metrics)
        where = (
            f"step {self.state.step + 1}: the loss is not finite on {ranks} of {world} rank(s) "
            f"(here, rank {self.rank}: {terms})"
        )
        if self.cfg.train.on_nonfinite == "stop":
            raise NonFiniteLoss(
                f"{where}; train.on_nonfinite=stop ends the run. Look for a learning rate too "
                "high (optim.lr), an fp16 overflow (train.precision) or a bad record; "
                "train.on_nonfinite=skip leaves such micro-batches out and counts them"
            )
        self.state.skipped += 1
        self.skips_in_a_row += 1
        if self.skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise NonFiniteLoss(
                f"{where}; {self.skips_in_a_row} micro-batches in a row were not finite "
                "(train.on_nonfinite=skip): the run has diverged"
            )
        if self.rank == 0:
            log.warning(
                "%s; left out (train.on_nonfinite=skip), %d so far", where, self.state.skipped
            )
        return False

    def micro_batch(
        self, metrics: dict[str, float], records: int, batch: TrainBatch | None = None
    ) -> None:
        """One micro-batch trained; after each optimizer step, draw (`batch`, every
        `train.attention_png_every` steps), report and checkpoint if due."""
        self.meter.add(metrics)
        self.state.records += records
        self.micro_batches += 1
        if self.micro_batches % self.cfg.train.grad_accum_steps:
            return
        self.state.step += 1
        if batch is not None and pictures_due(self.state.step, self.cfg.train):
            self.draw_attention(batch)
        report, checkpoint = report_due(self.state.step, self.cfg.train)
        if report:
            self.report(checkpoint)

    def report(self, with_checkpoint: bool) -> None:
        """Report the metrics since the last report (every rank calls this at the same step)."""
        now = time.perf_counter()
        metrics = self.meter.means()
        steps = max(self.state.step - self.last_report_step, 1)
        metrics.update(
            {
                "step": self.state.step,
                "records": all_reduce_sum(self.state.records, self.engine.device),
                "time/data_wait_s": self.wait_s,
                "time/first_batch_s": self.first_batch_s or 0.0,  # since this process started
                "time/step_s": (now - self.last_report) / steps,
                "optim/lr": self.scheduler.get_last_lr()[0],
                "train/resumed_from": self.state.resumed_from,  # -1: never resumed
                "train/skipped_steps": self.state.skipped,  # the same on every rank
                "train/epoch": self.state.epoch,  # the pass over the data this step was in
            }
        )
        self.last_report, self.wait_s, self.last_report_step = now, 0.0, self.state.step
        self.state.history.append(metrics)
        if self.tracker is not None:
            self.tracker.report(metrics)
        if self.rank == 0:
            log.info(format_metrics(metrics, self.cfg.train.max_steps))
            self.warn_if_plain_sft(metrics)
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        average_norm_statistics(self.module, self.engine.device)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_checkpoint(tmp)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=checkpoint_name(self.state.step),
            )
        if self.done and self.tracker is not None:  # the last step always has a checkpoint
            self.tracker.close()

    def draw_attention(self, batch: TrainBatch) -> None:
        """The attention pictures of this rank's micro-batch; rank 0's tracker writes and logs
        them. Every rank calls this at the same step (`pictures_due`)."""
        samples = probe_batch(self.module, batch, self.cfg.loss.matching, self.state.step)
        if self.tracker is not None:
            self.tracker.pictures(self.state.step, samples)

    def warn_if_plain_sft(self, metrics: dict[str, float]) -> None:
        """Warn once when `align/matched_words` was 0 in each of this worker's first
        `PLAIN_SFT_REPORTS` reports, or in each report of a run that ends before that many (not
        with `loss.lambda=0`, plain SFT by choice)."""
        if len(self.first_matched) >= PLAIN_SFT_REPORTS or self.cfg.loss.lambda_ == 0:
            return
        self.first_matched.append(metrics.get("align/matched_words", math.nan))
        if ((len(self.first_matched) == PLAIN_SFT_REPORTS or self.done)
                and not any(self.first_matched)):
            loss = self.cfg.loss
            log.warning(PLAIN_SFT_WARNING, self.state.step, loss.word_source, loss.matching,
                        loss.skip_stop_words)

    def save_checkpoint(self, folder: str) -> None:
        """This rank's part of a checkpoint: DeepSpeed state, its step, records and epoch; rank 0
        adds the verified export and the metrics history. Every rank must call it (ZeRO-3
        gathers)."""
        # without the frozen base weights: 2 x 21 GB per checkpoint at 11B under ZeRO-2
        self.engine.save_checkpoint(folder, tag=DS_TAG, exclude_frozen_parameters=True)
        export_trained(self.module, self.cfg, os.path.join(folder, EXPORT_DIR), rank=self.rank)
        with open(os.path.join(folder, STATE_FILE.format(rank=self.rank)), "w") as f:
            saved = {"step": self.state.step, "records": self.state.records,
                     "skipped": self.state.skipped, "epoch": self.state.epoch}
            json.dump(saved, f)
        if self.rank == 0:
            with open(os.path.join(folder, METRICS_FILE), "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.state.history)
