"""The per-worker training loop run by Ray Train (`train_fn_per_worker`, handed over by
`train.entry.run_worker` so that the driver never imports this module).

Each worker rebuilds the typed config from the dict it is given, builds adapter + LoRA +
Aligner, hands them to `deepspeed.initialize` with the DeepSpeed config built from the typed
config and the world size, restores the latest checkpoint if there is one, and trains on its
shard of the "train" dataset (`iter_torch_batches`, epoch after epoch; later epochs replayed from
memory when the first fits `pipeline.replay_mb`: `micro_batches`) until `train.max_steps`
optimizer steps (`train.grad_accum_steps` micro-batches each). Metrics and checkpoints leave
through the worker's `reporting.Reporter` (rank 0's with a `trackers.RunTracker`: metrics.jsonl,
attention PNGs, `train.report_to`), which also decides whether a micro-batch with a
non-finite loss stops the run or is left out (`train_micro_batch`, `train.on_nonfinite`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray.train
import torch
from ray.data import DataIterator
from ray.data.collate_fn import ArrowBatchCollateFn
from transformers.integrations import HfDeepSpeedConfig

from lavender_ray.align import build_aligner
from lavender_ray.config import LavenderConfig
from lavender_ray.console.display import format_duration
from lavender_ray.placement import Device, resolve_precision
from lavender_ray.tensors import TORCH_DTYPES
from lavender_ray.train.faults import maybe_inject_fault
from lavender_ray.train.precision import deepspeed_config, gradient_buckets, import_deepspeed
from lavender_ray.train.reporting import Reporter, TrainState, all_reduce_sum, restore
from lavender_ray.train.step import (
    LavenderModule,
    TrainBatch,
    build_lr_scheduler,
    build_optimizer,
    collate_records,
)
from lavender_ray.train.trackers import RunTracker
from lavender_ray.vlm import build_adapter

deepspeed = import_deepspeed()
log = logging.getLogger(__name__)
STREAM_EPOCH_WARNING = (
    "the second epoch starts: in pipeline.mode=stream every epoch runs SD on every record again "
    "(the first took %s, %d micro-batches on rank 0; not kept to replay: more than "
    "pipeline.replay_mb=%d MiB on some worker); pipeline.mode=cache computes each record's "
    "target once, writes it to pipeline.cache_path and reads it in later epochs"
)
REPLAY_NOTE = (
    "the second epoch starts: every worker replays its first epoch from memory (rank 0: %d "
    "micro-batches, %.1f MiB; pipeline.replay_mb), without running the dataset again"
)


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


# transformers keeps only a weak reference to the `HfDeepSpeedConfig` that turns ZeRO-3 on for it
# (`is_deepspeed_zero3_enabled`); this worker process holds it for as long as it trains.
_zero3_for_transformers: list[Any] = []


def enable_zero3_loading(ds_config: dict[str, Any]) -> None:
    """Under ZeRO-3, make transformers build models inside `deepspeed.zero.Init`: from here on,
    `from_pretrained` allocates on each rank only its partition of every weight, and rank 0
    reads the (memory-mapped) checkpoint and scatters it layer by layer into the partitions,
    instead of every rank materialising the whole model in host memory before
    `deepspeed.initialize` partitions it (an 11B model is 22 GB in bf16 per rank, 176 GB of host
    memory at once on an 8-GPU node). Must come before the model is built and after the process
    group exists: DeepSpeed's communication layer is attached to it first (Ray Train's torch
    group; `torchrun`'s environment elsewhere), or DeepSpeed sizes the batch for a world of one.
    The tiny models (`tiny/<family>`) are built by their constructors, not `from_pretrained`:
    `deepspeed.initialize` partitions them, as it does under ZeRO-1/2."""
    deepspeed.init_distributed()
    _zero3_for_transformers[:] = [HfDeepSpeedConfig(ds_config)]


def build_engine(cfg: LavenderConfig, world: int) -> tuple[Any, LavenderModule, Any, torch.dtype]:
    """(DeepSpeed engine, the module it wraps, its LR scheduler, the dtype of its inputs)."""
    precision = resolve_precision(cfg.train.precision, Device.current())
    ds_config = deepspeed_config(cfg, world, precision)
    if cfg.train.zero_stage == 3:
        enable_zero3_loading(ds_config)
    torch.manual_seed(cfg.train.seed)
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    aligner = build_aligner(cfg.aligner, adapter.num_heads)
    module = LavenderModule(adapter, aligner, cfg.loss, cfg.sd.output_size)
    module.train()
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters()
                  if p.requires_grad)
    ds_config["zero_optimization"].update(gradient_buckets(trained))
    optimizer = build_optimizer(module, cfg.optim)
    steps_per_epoch = max(1, cfg.train.max_steps // cfg.train.epochs)
    scheduler = build_lr_scheduler(optimizer, cfg.optim, steps_per_epoch)
    engine, _, _, scheduler = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
    )
    return engine, module, scheduler, TORCH_DTYPES[precision]


def train_micro_batch(
    engine: Any, reporter: Reporter, batch: TrainBatch, dtype: torch.dtype, total_steps: int
) -> bool:
    """Forward one micro-batch; when its loss is finite on every rank, backward, step and hand
    its metrics to the reporter. Returns whether it was trained. A micro-batch left out
    (`train.on_nonfinite=skip`) is left out on every rank alike (`Reporter.finite`): neither
    `engine.backward` nor `engine.step` runs, so DeepSpeed's collectives stay in lockstep, no
    NaN reaches the accumulated gradients or the optimizer state, and DeepSpeed's
    accumulation boundary stays where the reporter counts it (both count trained micro-batches)."""
    moved = cast_inputs(batch, engine.device, dtype)
    out = engine(moved, reporter.step, total_steps)
    if not reporter.finite(out.metrics):
        return False
    engine.backward(out.total)
    engine.step()
    reporter.micro_batch(out.metrics, len(batch), moved)
    return True


def micro_batches(
    shard: DataIterator, cfg: LavenderConfig, collate: CollateRecords, rank: int,
    state: TrainState, device: torch.device,
) -> Iterator[TrainBatch]:
    """This worker's shard of the "train" dataset (`ray.train.get_dataset_shard`), one epoch
    after the other, without end, counting each epoch begun in `state.epoch`; an epoch that
    yields nothing is an error (every record was rejected).

    The micro-batches of this process's first epoch are kept while they fit
    `pipeline.replay_mb` (`TrainBatch.nbytes`). When they fit on every rank (one all-reduce as
    the second epoch starts; every rank gets there at the same micro-batch, the shards being
    equal), later epochs replay them: Ray Data would otherwise run the dataset again, starting
    its actor pools anew (the record check's, the SD stage's) and, in stream mode, running SD
    on every record again. Otherwise they are dropped and each epoch runs the dataset; in
    stream mode rank 0 then warns once (`STREAM_EPOCH_WARNING`)."""
    first_epoch, started = state.epoch + 1, time.monotonic()  # this process's first
    budget = cfg.pipeline.replay_mb * 2**20
    kept: list[TrainBatch] | None = [] if budget else None
    held = 0
    while True:
        state.epoch += 1
        count = 0
        for batch in shard.iter_torch_batches(
            batch_size=cfg.train.micro_batch_size, collate_fn=collate, prefetch_batches=1
        ):
            count += 1
            if kept is not None:
                held += batch.nbytes()
                if held <= budget:
                    kept.append(batch)
                else:  # too large to replay: every epoch runs the dataset
                    kept = None
            yield batch
        if not count:
            raise RuntimeError(
                f"rank {rank}: the train dataset shard is empty (no records with SD targets); "
                "check the rejects output for why every record was rejected"
            )
        if state.epoch == first_epoch:
            if all_reduce_sum(float(kept is None), device) == 0:
                break
            kept = None
            if rank == 0 and cfg.pipeline.mode == "stream":
                log.warning(STREAM_EPOCH_WARNING, format_duration(time.monotonic() - started),
                            count, cfg.pipeline.replay_mb)
    if rank == 0:
        log.info(REPLAY_NOTE, len(kept), held / 2**20)
    while True:
        state.epoch += 1
        yield from kept


def train_fn_per_worker(config: dict[str, Any]) -> None:
    # DeepSpeed's ZeRO calls torch's deprecated all_gather_into_tensor on every step
    warnings.filterwarnings(
        "ignore", message="`torch.distributed.all_gather_into_tensor` is deprecated"
    )
    cfg = LavenderConfig.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    engine, module, scheduler, dtype = build_engine(cfg, world)
    state = restore(engine, rank, cfg)
    tracker = RunTracker.open(cfg, state) if rank == 0 else None
    reporter = Reporter(cfg, engine, module, scheduler, rank, state, tracker)
    collate = CollateRecords(module.adapter, cfg.sd.output_size)
    shard = ray.train.get_dataset_shard("train")
    batches = reporter.timed(micro_batches(shard, cfg, collate, rank, state, engine.device))
    while not reporter.done:
        batch = next(batches)
        maybe_inject_fault(cfg, reporter.step, rank)
        train_micro_batch(engine, reporter, batch, dtype, cfg.train.max_steps)
