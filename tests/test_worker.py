"""The per-worker helpers of `lavender_ray.train.worker` and the trainer's ingest options,
without a Ray cluster or a process group; the reporter's health guards and checkpoint schedule
with a stand-in engine. Slow: a skipped micro-batch under two real DeepSpeed ranks, and one
TorchTrainer run whose loss diverges."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.train
import torch
from ranks import run_two_ranks
from test_sd_stage import OVERRIDES as SD_OVERRIDES

from lavender_ray.config import load_config
from lavender_ray.runs import (
    EXPORT_DIR,
    METRICS_FILE,
    SAVED_RUN_PARTS,
    STATE_FILE,
    checkpoint_name,
    latest_complete_checkpoint,
)
from lavender_ray.train import worker
from lavender_ray.train.launch import train
from lavender_ray.train.reporting import (
    MAX_SKIPS_IN_A_ROW,
    MetricMeter,
    NonFiniteLoss,
    Reporter,
    TrainState,
    all_reduce_sum,
    average_norm_statistics,
    format_metrics,
    restore,
)
from lavender_ray.train.schedule import report_due, report_steps
from lavender_ray.train.step import TrainBatch
from lavender_ray.train.worker import cast_inputs, micro_batches

CPU = torch.device("cpu")


def test_all_reduce_sum_without_a_process_group_is_the_value():
    assert all_reduce_sum(7.0, torch.device("cpu")) == 7.0


class _Reduced(Exception):
    """Stops `all_reduce_sum` after the fake collective saw its tensor."""


def test_all_reduce_sum_puts_its_tensor_on_the_engine_device(monkeypatch):
    # NCCL-only process groups (Ray Train with use_gpu) reject CPU tensors: the summed tensor
    # must live on the device it is given. `meta` stands in for cuda on this CPU machine.
    seen: list[torch.Tensor] = []

    def fake_all_reduce(t: torch.Tensor) -> None:
        seen.append(t)
        raise _Reduced

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    with pytest.raises(_Reduced):
        all_reduce_sum(3.0, torch.device("meta"))
    assert seen[0].device.type == "meta"
    assert seen[0].dtype == torch.float64


def test_batch_norm_statistics_are_averaged_over_ranks(monkeypatch):
    # two ranks: the other rank's running mean is 1 and running var 3 everywhere
    norm = torch.nn.BatchNorm2d(2)
    norm.running_mean.fill_(0.5)
    norm.running_var.fill_(1.0)
    others = iter([torch.ones(2), torch.full((2,), 3.0)])

    def fake_all_reduce(t: torch.Tensor) -> None:
        t.add_(next(others))

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), norm, torch.nn.GroupNorm(1, 2))
    average_norm_statistics(module, torch.device("cpu"))
    assert norm.running_mean.tolist() == [0.75, 0.75]
    assert norm.running_var.tolist() == [2.0, 2.0]


def test_metric_meter_means_between_reports_then_starts_over():
    meter = MetricMeter()
    meter.add({"loss/total": 1.0, "align/matched_words": 2})
    meter.add({"loss/total": 3.0, "align/matched_words": 4})
    assert meter.means() == {"loss/total": 2.0, "align/matched_words": 3.0}
    assert meter.means() == {}
    meter.add({"loss/total": 5.0})
    assert meter.means() == {"loss/total": 5.0}


def test_format_metrics_shows_known_keys_in_order():
    line = format_metrics(
        {"step": 10.0, "loss/att": 0.5, "loss/total": 1.25, "other": 9.0, "loss/lm": math.nan},
        max_steps=30,
    )
    assert line == "step 10/30  loss/total 1.25  loss/lm nan  loss/att 0.5"


def test_cast_inputs_casts_floating_inputs_only():
    batch = TrainBatch(
        inputs={
            "input_ids": torch.tensor([[1, 2, 3]]),
            "pixel_values": torch.zeros(1, 3, 4, 4),
            "image_sizes": [(4, 4)],
        },
        sd_words=[["dog"]],
        sd_maps=[torch.zeros(1, 2, 2)],
    )
    out = cast_inputs(batch, torch.device("cpu"), torch.bfloat16)
    assert out.inputs["input_ids"].dtype == torch.int64
    assert out.inputs["pixel_values"].dtype == torch.bfloat16
    assert out.inputs["image_sizes"] == [(4, 4)]
    assert out.sd_maps[0].dtype == torch.float32  # targets keep full precision


def test_ingest_options_carry_no_deprecated_field():
    import warnings

    from ray.train import DataConfig
    from ray.util.annotations import RayDeprecationWarning

    from lavender_ray.train.launch import ingest_config

    with warnings.catch_warnings():
        warnings.simplefilter("error", RayDeprecationWarning)
        with pytest.raises(RayDeprecationWarning):  # what Ray Train's default does
            DataConfig()._resolve_execution_options("train")
        options = ingest_config()._resolve_execution_options("train")
    assert options.preserve_order is False


# ------------------------------------------------------------------------------- restore
def write_checkpoint(run_dir, step: int, ranks: tuple[int, ...] = (0, 1)) -> None:
    """A checkpoint folder as the ranks leave it: each rank's state file, rank 0's metrics
    history and export (a DeepSpeed state is not needed: the engine below records the load)."""
    folder = run_dir / checkpoint_name(step)
    for rank in ranks:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE.format(rank=rank)).write_text(
            json.dumps({"step": step, "records": 2 * step, "epoch": step // 4 + 1}))
    if 0 in ranks:
        (folder / METRICS_FILE).write_text(json.dumps({"step": step}) + "\n")
        for part in SAVED_RUN_PARTS:
            (folder / EXPORT_DIR / part).mkdir(parents=True)


@pytest.mark.parametrize("registered", [None, 2])
def test_a_resumed_run_restores_the_newest_complete_checkpoint_of_its_folder(
        tmp_path, monkeypatch, registered):
    """Ctrl-C can stop the driver before Ray Train registers a checkpoint the ranks wrote (its
    snapshot then names an older one, or none): the run goes on from the newest complete
    checkpoint in its folder, never from scratch; a half-written one is passed over."""
    cfg = load_config("demo", [f"train.storage_path={tmp_path}", "train.run_name=r",
                               "train.num_workers=2"])
    run_dir = tmp_path / "r"
    write_checkpoint(run_dir, 2)
    write_checkpoint(run_dir, 4)
    write_checkpoint(run_dir, 6, ranks=(0,))  # rank 1 was stopped while writing
    assert latest_complete_checkpoint(str(run_dir), 2) == 4
    assert latest_complete_checkpoint(str(run_dir), 1) == 6
    assert latest_complete_checkpoint(str(tmp_path / "none"), 2) is None
    ray_checkpoint = None if registered is None else ray.train.Checkpoint(
        str(run_dir / checkpoint_name(registered)))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray_checkpoint)
    loaded = []
    engine = SimpleNamespace(load_checkpoint=lambda folder, **kw: loaded.append(folder))
    state = restore(engine, 1, cfg)
    assert (state.step, state.records, state.resumed_from, state.epoch) == (4, 8, 4, 2)
    assert [Path(folder).name for folder in loaded] == [checkpoint_name(4)]
    # Ray's registered checkpoint (after a worker failure) when none in the folder is newer
    write_checkpoint(run_dir, 8)
    monkeypatch.setattr(ray.train, "get_checkpoint",
                        lambda: ray.train.Checkpoint(str(run_dir / checkpoint_name(8))))
    assert restore(engine, 1, cfg).step == 8 and Path(loaded[-1]).name == checkpoint_name(8)
    fresh = load_config("demo", [f"train.storage_path={tmp_path}", "train.run_name=new"])
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert restore(engine, 0, fresh).step == 0


# ---------------------------------------------------------------------- health and schedule
def reporter(*overrides: str, rank: int = 0) -> Reporter:
    cfg = load_config("demo", list(overrides))
    engine = SimpleNamespace(device=torch.device("cpu"))
    scheduler = SimpleNamespace(get_last_lr=lambda: [1e-3])
    return Reporter(cfg, engine, torch.nn.Linear(1, 1), scheduler, rank, TrainState())


def step_metrics(lm: float = 2.0, att: float = 0.5, matched: float = 3.0) -> dict[str, float]:
    return {"loss/total": lm + att, "loss/lm": lm, "loss/att": att,
            "align/matched_words": matched}


@pytest.fixture
def reports(monkeypatch) -> list[dict]:
    """What the reporter hands to `ray.train.report` (no checkpoint steps in these tests)."""
    sent: list[dict] = []
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kwargs: sent.append(metrics))
    return sent


def test_checkpoints_keep_their_own_schedule_and_each_comes_with_a_report():
    cfg = load_config("demo", ["train.max_steps=10", "train.report_every=3",
                               "train.checkpoint_every=4"])
    due = {step: report_due(step, cfg.train) for step in range(1, 11)}
    assert [s for s, (_, checkpoint) in due.items() if checkpoint] == [4, 8, 10]  # + the last
    assert report_steps(cfg.train) == [3, 4, 6, 8, 9, 10]
    assert report_steps(cfg.train) == [s for s, (report, _) in due.items() if report]


def test_the_reporter_checkpoints_at_multiples_of_checkpoint_every(monkeypatch):
    calls: list[tuple[int, bool]] = []
    monkeypatch.setattr(Reporter, "report", lambda self, c: calls.append((self.step, c)))
    r = reporter("train.max_steps=7", "train.report_every=2", "train.checkpoint_every=3",
                 "train.grad_accum_steps=2")
    for _ in range(14):
        r.micro_batch(step_metrics(), records=1)
    assert calls == [(2, False), (3, True), (4, False), (6, True), (7, True)]
    assert r.done and r.state.records == 14


def test_the_wait_for_the_first_batch_is_reported_apart_from_the_later_waits(reports):
    """The first batch waits for the pipeline's start-up (SD actors loading), the others for
    its steady rate: the progress display's ETA needs them apart."""
    r = reporter("train.report_every=3", "train.max_steps=7")  # step 7 would checkpoint

    def slow(waits):
        for wait in waits:
            time.sleep(wait)
            yield wait

    for _ in r.timed(slow([0.3, 0.1, 0.1, 0.0, 0.1, 0.0])):
        r.micro_batch(step_metrics(), records=1)
    first, second = reports
    assert first["time/first_batch_s"] == pytest.approx(0.3, abs=0.05)
    assert first["time/data_wait_s"] == pytest.approx(0.5, abs=0.05)
    assert second["time/first_batch_s"] == first["time/first_batch_s"]  # per process, once
    assert first["train/epoch"] == 0  # no `micro_batches` here to count the epochs
    assert second["time/data_wait_s"] == pytest.approx(0.1, abs=0.05)


def test_a_nonfinite_loss_stops_every_rank_naming_the_step_and_the_terms():
    r = reporter()
    assert r.finite(step_metrics())
    with pytest.raises(NonFiniteLoss) as err:
        r.finite(step_metrics(lm=math.nan))
    message = str(err.value)
    assert "step 1:" in message and "loss/lm=nan" in message and "loss/att=0.5" in message
    assert "train.on_nonfinite=skip" in message


def test_ranks_agree_on_another_ranks_nonfinite_loss(monkeypatch):
    # this rank's loss is finite; the all-reduce adds the other rank's flag
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(1.0))
    with pytest.raises(NonFiniteLoss, match=r"on 1 of 2 rank\(s\) \(here, rank 1: loss/total=2.5"):
        reporter(rank=1).finite(step_metrics())
    skipping = reporter("train.on_nonfinite=skip", rank=1)
    assert not skipping.finite(step_metrics()) and skipping.state.skipped == 1


def test_skip_leaves_the_micro_batch_out_and_counts_it(reports, caplog):
    r = reporter("train.on_nonfinite=skip", "train.report_every=2", "train.max_steps=4")
    trained = 0
    for loss in (1.0, math.inf, 3.0, math.nan, math.nan, 5.0):
        metrics = step_metrics(lm=loss)
        if r.finite(metrics):
            r.micro_batch(metrics, records=1)
            trained += 1
    assert trained == 3 and r.step == 3 and r.state.records == 3
    assert len(reports) == 1 and reports[0]["step"] == 2
    assert reports[0]["train/skipped_steps"] == 1 and reports[0]["loss/lm"] == 2.0
    assert r.state.skipped == 3
    assert sum("left out (train.on_nonfinite=skip)" in m for m in caplog.messages) == 3


def test_skipping_ends_when_the_loss_does_not_come_back():
    r = reporter("train.on_nonfinite=skip")
    for _ in range(MAX_SKIPS_IN_A_ROW - 1):
        assert not r.finite(step_metrics(lm=math.nan))
    with pytest.raises(NonFiniteLoss, match="in a row were not finite"):
        r.finite(step_metrics(lm=math.nan))


def test_reported_metrics_keep_a_nan(reports):
    r = reporter("train.report_every=1")
    r.micro_batch({**step_metrics(), "optim/grad_norm": math.nan}, records=1)
    assert math.isnan(reports[0]["optim/grad_norm"]) and reports[0]["train/skipped_steps"] == 0


class EpochShard:
    """A dataset shard with `per_epoch` micro-batches of `nbytes` bytes each in each epoch (0:
    an empty shard); `epochs` counts the epochs run (`iter_torch_batches` calls)."""

    def __init__(self, per_epoch: int, nbytes: int = 8) -> None:
        self.per_epoch, self.nbytes, self.epochs = per_epoch, nbytes, 0

    def iter_torch_batches(self, **_: object):
        self.epochs += 1
        return (TrainBatch({"input_ids": torch.full((self.nbytes // 8,), i)}, [["w"]], [])
                for i in range(self.per_epoch))


def take(shard: EpochShard, *overrides: str, rank: int = 0, batches: int = 7):
    """The first `batches` micro-batches of `micro_batches` over `shard`, each as (its index in
    its epoch, the epoch `state` says it is in: what the report of its step says)."""
    state = TrainState()
    got = micro_batches(shard, load_config("demo", list(overrides)), None, rank, state, CPU)
    return [(int(next(got).inputs["input_ids"][0]), state.epoch) for _ in range(batches)]


EPOCHS_OF_3 = [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2), (0, 3)]


def test_later_epochs_replay_the_first_from_memory_without_running_the_dataset(caplog):
    caplog.set_level(logging.INFO, logger=worker.__name__)
    shard = EpochShard(3)
    assert take(shard) == EPOCHS_OF_3
    assert shard.epochs == 1  # epochs 2 and 3 came from memory
    (note,) = [m for m in caplog.messages if "replays its first epoch" in m]
    assert "3 micro-batches" in note and "pipeline.replay_mb" in note
    caplog.clear()
    assert take(EpochShard(3), rank=1) == EPOCHS_OF_3 and not caplog.messages  # rank 0 says it

    # a first epoch larger than pipeline.replay_mb (3 x 0.5 MiB > 1 MiB) runs the dataset again
    shard = EpochShard(3, nbytes=2**19)
    assert take(shard, "pipeline.replay_mb=1") == EPOCHS_OF_3 and shard.epochs == 3
    shard = EpochShard(3, nbytes=2**19)
    assert take(shard, "pipeline.replay_mb=2") == EPOCHS_OF_3 and shard.epochs == 1
    shard = EpochShard(3)
    assert take(shard, "pipeline.replay_mb=0") == EPOCHS_OF_3 and shard.epochs == 3


def test_every_rank_runs_the_dataset_again_when_one_cannot_replay(monkeypatch):
    # another rank's first epoch did not fit: the all-reduce counts one rank without a replay;
    # replaying here would leave that rank alone in Ray Data's next epoch (it waits for all)
    monkeypatch.setattr(worker, "all_reduce_sum", lambda value, device: value + 1)
    shard = EpochShard(3)
    assert take(shard) == EPOCHS_OF_3 and shard.epochs == 3


def test_a_stream_run_warns_once_as_its_second_epoch_runs_sd_again(caplog):
    def warnings(*overrides: str, rank: int = 0, batches: int = 7) -> list[str]:
        caplog.clear()
        taken = take(EpochShard(3), "pipeline.replay_mb=0", *overrides, rank=rank,
                     batches=batches)
        assert taken == EPOCHS_OF_3[:batches]
        return [m for m in caplog.messages if "second epoch" in m]

    (warning,) = warnings()  # three epochs begun, one warning
    assert "every epoch runs SD on every record again" in warning
    assert "3 micro-batches on rank 0" in warning and "pipeline.mode=cache" in warning
    assert "pipeline.replay_mb=0 MiB" in warning
    assert not warnings(batches=3)  # the first epoch's last batch: nothing yet
    assert not warnings(rank=1)
    assert not warnings("pipeline.mode=cache")
    with pytest.raises(RuntimeError, match="rank 1: the train dataset shard is empty"):
        take(EpochShard(0), rank=1, batches=1)


def test_no_matched_word_in_the_first_reports_warns_once_that_the_run_is_plain_sft(
    reports, caplog, monkeypatch
):
    monkeypatch.setattr(Reporter, "save_checkpoint", lambda self, folder: None)  # the last step
    def warnings(r: Reporter, matched: list[float]) -> list[str]:
        caplog.clear()
        for value in matched:
            r.micro_batch(step_metrics(matched=value), records=1)
        return [m for m in caplog.messages if "plain SFT" in m]

    (warning,) = warnings(reporter("train.report_every=1"), [0, 0, 0, 0])
    assert "0 in every report up to step 2" in warning
    assert "loss.word_source=label" in warning and "loss.matching=root" in warning
    assert "target_text" in warning and "This run: loss.word_source=predicted" in warning
    assert not warnings(reporter("train.report_every=1"), [0, 2, 0, 0])
    assert not warnings(reporter("train.report_every=1", rank=1), [0, 0, 0])
    assert not warnings(reporter("train.report_every=1", "loss.lambda=0"), [0, 0, 0])
    # a run that ends at its first report (max_steps <= report_every) is told as it ends
    (warning,) = warnings(reporter("train.report_every=5", "train.max_steps=4"), [0, 0, 0, 0])
    assert "0 in every report up to step 4" in warning
    assert not warnings(reporter("train.report_every=5", "train.max_steps=4"), [0, 0, 0, 1])


SKIP_SCRIPT = r"""
import math, os
import torch, deepspeed
from lavender_ray.align import build_aligner
from lavender_ray.config import load_config
from lavender_ray.data.synthetic import make_synthetic_records
from lavender_ray.sd.target import stand_in_target
from lavender_ray.train.precision import deepspeed_config
from lavender_ray.train.reporting import Reporter, TrainState
from lavender_ray.train.step import LavenderModule, build_optimizer, collate_records
from lavender_ray.train.worker import train_micro_batch
from lavender_ray.vlm import build_adapter

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
records = []
for record in make_synthetic_records(2, seed=rank, image_size=48):
    records.append(record | stand_in_target(record["target_text"]).to_row())


def run(cfg, with_nan):
    torch.manual_seed(0)
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    module = LavenderModule(adapter, build_aligner(cfg.aligner, adapter.num_heads), cfg.loss, 32)
    module.train()
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=build_optimizer(module, cfg.optim),
        config=deepspeed_config(cfg, world, "fp32"))
    reporter = Reporter(cfg, engine, module, None, rank, TrainState())
    first, second = (collate_records([r], adapter, 32) for r in records)
    bad = collate_records(records[:1], adapter, 32)
    if rank == world - 1:  # a NaN loss on the last rank only: every rank must leave it out
        bad.inputs["pixel_values"] = torch.full_like(bad.inputs["pixel_values"], math.nan)
    batches = [first, bad, second] if with_nan else [first, second]
    trained = [train_micro_batch(engine, reporter, b, torch.float32, 10) for b in batches]
    params = [p for p in module.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params):
        values = [p.detach().clone() for p in params]
    engine.destroy()
    return trained, values, reporter, engine


def outcome(stage):
    cfg = load_config("demo", ["loss.word_source=label", "lora.dropout=0",
                               "train.grad_accum_steps=2", f"train.zero_stage={stage}",
                               "train.on_nonfinite=skip"])
    (trained, skipped_run, reporter, engine), (_, clean_run, _, _) = run(cfg, True), run(cfg, False)
    torch.manual_seed(0)
    untrained = [p for p in build_adapter(cfg.vlm, cfg.lora, 32).model.parameters()
                 if p.requires_grad]
    return {
        "trained": trained, "step": reporter.step, "skipped": reporter.state.skipped,
        "engine_steps": engine.global_steps,
        "same_as_without_it": all(torch.equal(a, b) for a, b in zip(skipped_run, clean_run)),
        "finite": all(bool(torch.isfinite(v).all()) for v in skipped_run),
        "updated": any(not torch.equal(a, b) for a, b in zip(skipped_run, untrained)),
    }


report({stage: outcome(stage) for stage in (2, 3)})  # one launch: the stack imported once
"""


@pytest.mark.slow  # two DeepSpeed ranks in subprocesses
@pytest.mark.timeout(300)
def test_a_skipped_micro_batch_leaves_no_trace_under_zero_2_and_3(tmp_path):
    """Two ranks under ZeRO-2, then ZeRO-3, gradient accumulation 2: a micro-batch whose loss is
    NaN on one rank only is left out on both, and the weights end exactly as in a run without
    it."""
    for by_stage in run_two_ranks(SKIP_SCRIPT, tmp_path, 29662):
        assert sorted(by_stage) == ["2", "3"]
        for stage, result in by_stage.items():
            assert result["trained"] == [True, False, True], stage
            assert result["step"] == result["engine_steps"] == 1, stage
            assert result["skipped"] == 1, stage
            assert result["same_as_without_it"] and result["finite"] and result["updated"], stage


REPLAY_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
from lavender_ray.config import load_config
from lavender_ray.train.reporting import TrainState
from lavender_ray.train.step import TrainBatch
from lavender_ray.train.worker import micro_batches

dist.init_process_group("gloo")
rank = dist.get_rank()
big = int(sys.argv[1])  # the bytes of rank 1's micro-batches; rank 0's are 8


class Shard:
    def __init__(self, nbytes):
        self.nbytes, self.epochs = nbytes, 0

    def iter_torch_batches(self, **_):
        self.epochs += 1
        return (TrainBatch({"x": torch.full((self.nbytes // 8,), i)}, [["w"]], [])
                for i in range(3))


shard, state = Shard(big if rank == 1 else 8), TrainState()
got = micro_batches(shard, load_config("demo", ["pipeline.replay_mb=1"]), None, rank, state,
                    torch.device("cpu"))
taken = [(int(next(got).inputs["x"][0]), state.epoch) for _ in range(7)]
report({"taken": taken, "epochs_run": shard.epochs})
"""


@pytest.mark.slow  # two ranks in subprocesses
@pytest.mark.timeout(300)
def test_the_ranks_agree_whether_to_replay_over_a_real_process_group(tmp_path):
    """pipeline.replay_mb=1 over gloo: when rank 1's first epoch (3 x 0.5 MiB) does not fit,
    rank 0 (3 x 8 bytes) runs the dataset again too; when both fit, neither does."""
    for nbytes, epochs_run in ((2**19, 3), (8, 1)):
        work = tmp_path / str(nbytes)
        work.mkdir()
        for result in run_two_ranks(REPLAY_SCRIPT, work, 29670, str(nbytes)):
            assert result["taken"] == [list(t) for t in EPOCHS_OF_3]
            assert result["epochs_run"] == epochs_run, (nbytes, result)


@pytest.mark.slow  # starts a TorchTrainer
@pytest.mark.timeout(600)
def test_a_diverging_run_stops_with_the_error_naming_step_and_loss(ray_local, tmp_path):
    # Adam's first step moves every trainable weight by about optim.lr: the next loss overflows
    cfg = load_config("demo", {
        **SD_OVERRIDES, "optim.lr": 1e30, "train.max_steps": 4, "train.max_failures": 0,
        "data.sources": [{"name": "s", "format": "synthetic", "num_samples": 12}],
        "train.storage_path": str(tmp_path / "runs"),
    })
    with pytest.raises(Exception, match=r"step \d: the loss is not finite") as err:
        train(cfg)
    assert "train.on_nonfinite=stop ends the run" in str(err.value)
