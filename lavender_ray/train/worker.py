"""The per-worker training loop run by Ray Train (`TorchTrainer(train_fn_per_worker, ...)`).

Each worker rebuilds the typed config from the dict it is given, builds adapter + LoRA +
Aligner, hands them to `deepspeed.initialize` with the DeepSpeed config built from the typed
config and the world size, and reads its shard of the "train" dataset with
`iter_torch_batches`. A step is one optimizer step (`train.grad_accum_steps` micro-batches).

Every `train.report_every` steps rank 0's metrics are reported; every `train.checkpoint_every`
steps (and at the end) each rank saves its DeepSpeed state into the reported checkpoint and
rank 0 adds the verified export (`export/`: PEFT adapter + Aligner + config). A restarted
worker group resumes from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections import defaultdict
from typing import Any

import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from lavender_ray import storage
from lavender_ray.config import LavenderConfig
from lavender_ray.train.export import export_trained
from lavender_ray.train.local import (
    LavenderModule,
    TrainBatch,
    build_lr_scheduler,
    build_optimizer,
    collate_records,
)
from lavender_ray.train.precision import Device, deepspeed_config, resolve_precision

# Progress goes through logging: Ray Train patches `print` in its workers to both print and log,
# which shows every printed line twice in the driver's output.
log = logging.getLogger(__name__)
DS_TAG = "deepspeed"
METRICS_FILE = "metrics.jsonl"  # rank 0's reported metrics so far, in every checkpoint
EXPORT_DIR = "export"
STATE_FILE = "lavender_state_rank{rank}.json"  # one per rank: Ray merges rank dirs
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class InjectedFault(RuntimeError):
    """Raised once by `train.fail_at_step` to test recovery from worker failures."""


class CollateRecords(ArrowBatchCollateFn):
    """`iter_torch_batches` collate_fn: an Arrow batch of records with targets -> `TrainBatch`
    (images decoded, chat-templated and padded by the adapter; moved to the device by the loop)."""

    def __init__(self, adapter: Any, map_size: int) -> None:
        self.adapter = adapter
        self.map_size = map_size

    def __call__(self, batch: pa.Table) -> TrainBatch:
        return collate_records(batch.to_pylist(), self.adapter, self.map_size)


def cast_inputs(batch: TrainBatch, device: torch.device, dtype: torch.dtype) -> TrainBatch:
    """Move to `device`; floating inputs (pixel values) take the engine's dtype."""
    moved = batch.to(device)
    moved.inputs = {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in moved.inputs.items()
    }
    return moved


def maybe_inject_fault(cfg: LavenderConfig, step: int, rank: int) -> None:
    """`train.fail_at_step`: rank 0 raises once at that step (a marker file in the run's
    storage records it, so the replacement worker, wherever it runs, goes on)."""
    if cfg.train.fail_at_step != step or rank != 0:
        return
    from lavender_ray.train.launch import run_dir_of  # launch imports this module

    marker = f"{run_dir_of(cfg)}/fault_injected"
    if storage.exists(marker):
        return
    storage.write_text(marker, str(step))
    raise InjectedFault(f"train.fail_at_step={step}: injected worker failure")


class MetricMeter:
    """Means of step metrics between two reports, plus counters that only grow."""

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


def train_fn_per_worker(config: dict[str, Any]) -> None:
    import deepspeed
    import ray.train

    # DeepSpeed's ZeRO calls torch's deprecated all_gather_into_tensor on every step
    warnings.filterwarnings(
        "ignore", message="`torch.distributed.all_gather_into_tensor` is deprecated"
    )
    cfg = LavenderConfig.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    precision = resolve_precision(cfg.train.precision, Device.current())
    torch.manual_seed(cfg.train.seed)

    from lavender_ray.align import build_aligner
    from lavender_ray.vlm import build_adapter

    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    aligner = build_aligner(cfg.aligner, adapter.num_heads)
    module = LavenderModule(adapter, aligner, cfg.loss, cfg.sd.output_size)
    module.train()
    optimizer = build_optimizer(module, cfg.optim)
    steps_per_epoch = max(1, cfg.train.max_steps // cfg.train.epochs)
    scheduler = build_lr_scheduler(optimizer, cfg.optim, steps_per_epoch)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world, precision),
    )
    dtype = DTYPES[precision]

    step, records_done, history, resumed_from = 0, 0, [], -1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            # the checkpoint holds the trainable weights only: the frozen base comes from
            # the model's own weights, so the module load cannot be strict
            engine.load_checkpoint(ckpt_dir, tag=DS_TAG, load_module_strict=False)
            with open(os.path.join(ckpt_dir, STATE_FILE.format(rank=rank))) as f:
                state = json.load(f)
            if rank == 0:
                with open(os.path.join(ckpt_dir, METRICS_FILE)) as f:
                    history = [json.loads(line) for line in f]
        step, records_done = state["step"], state["records"]
        resumed_from = step
        if rank == 0:
            log.info("resumed from %s at step %d", checkpoint.path, step)

    shard = ray.train.get_dataset_shard("train")
    collate = CollateRecords(adapter, cfg.sd.output_size)
    meter = MetricMeter()
    accum = cfg.train.grad_accum_steps
    micro, wait_s, t_last = 0, 0.0, time.perf_counter()
    while step < cfg.train.max_steps:
        got_any = False
        t_wait = time.perf_counter()
        for batch in shard.iter_torch_batches(
            batch_size=cfg.train.micro_batch_size, collate_fn=collate, prefetch_batches=1
        ):
            wait_s += time.perf_counter() - t_wait
            got_any = True
            maybe_inject_fault(cfg, step, rank)
            out = engine(cast_inputs(batch, engine.device, dtype), step, cfg.train.max_steps)
            engine.backward(out.total)
            engine.step()
            micro += 1
            records_done += len(batch)
            meter.add(out.metrics)
            if micro % accum == 0:
                step += 1
                if step % cfg.train.report_every == 0 or step == cfg.train.max_steps:
                    metrics = meter.means()
                    now = time.perf_counter()
                    metrics.update(
                        {
                            "step": step,
                            "records": all_reduce_sum(records_done, engine.device),
                            "time/data_wait_s": wait_s,
                            "time/step_s": (now - t_last) / cfg.train.report_every,
                            "optim/lr": scheduler.get_last_lr()[0],
                            "train/resumed_from": resumed_from,  # -1: never resumed
                        }
                    )
                    t_last, wait_s = now, 0.0
                    history.append(metrics)
                    if rank == 0:
                        log.info(format_metrics(metrics, cfg.train.max_steps))
                    is_ckpt = step % cfg.train.checkpoint_every == 0 or step == cfg.train.max_steps
                    report(engine, module, cfg, history, step, records_done, rank, is_ckpt)
                if step >= cfg.train.max_steps:
                    break
            t_wait = time.perf_counter()
        if not got_any:
            raise RuntimeError(
                f"rank {rank}: the train dataset shard is empty (no records with SD targets); "
                "check the rejects output for why every record was rejected"
            )


def format_metrics(metrics: dict[str, float], max_steps: int) -> str:
    """One progress line: `step 10/30  loss/total 1.234  ...`."""
    keys = ["loss/total", "loss/lm", "loss/att", "align/matched_words", "time/step_s"]
    parts = [f"{k} {metrics[k]:.4g}" for k in keys if k in metrics]
    return f"step {int(metrics['step'])}/{max_steps}  " + "  ".join(parts)


def report(
    engine: Any,
    module: LavenderModule,
    cfg: LavenderConfig,
    history: list[dict[str, float]],
    step: int,
    records: int,
    rank: int,
    with_checkpoint: bool,
) -> None:
    """`ray.train.report` from every rank; with a checkpoint: DeepSpeed state of every rank and
    rank 0's verified export and metrics history, merged by Ray Train into one directory."""
    import ray.train

    metrics = {k: v for k, v in history[-1].items() if not (isinstance(v, float) and math.isnan(v))}
    if not with_checkpoint:
        ray.train.report(metrics)
        return
    average_norm_statistics(module, engine.device)
    with tempfile.TemporaryDirectory() as tmp:
        # without the frozen base weights: 2 x 21 GB per checkpoint at 11B under ZeRO-2
        engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)
        export_trained(module, cfg, os.path.join(tmp, EXPORT_DIR), rank=rank)
        with open(os.path.join(tmp, STATE_FILE.format(rank=rank)), "w") as f:
            json.dump({"step": step, "records": records}, f)
        if rank == 0:
            with open(os.path.join(tmp, METRICS_FILE), "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in history)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_step{step:07d}",
        )
