"""The single-process step and loop on the tiny VLMs of every family, with synthetic SD targets.

SD targets here are made from the image itself: a colour word's map is where that colour is
(the shape it names), every other word's map a centred Gaussian; fixed for the whole run.
"""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavender_ray.align import build_aligner
from lavender_ray.config import LavenderConfig, load_config
from lavender_ray.data.synthetic import COLORS, make_synthetic_records
from lavender_ray.families import registered_families
from lavender_ray.runs import load_trained, save_trained
from lavender_ray.schema import encode_maps
from lavender_ray.train.local import fit_local
from lavender_ray.train.step import (
    LavenderModule,
    TrainBatch,
    build_lr_scheduler,
    build_optimizer,
    collate_records,
    optimizer_step,
)
from lavender_ray.vlm import build_adapter

FAMILIES = registered_families()
MAP_SIZE = 16


def with_blob_targets(record: dict, size: int) -> dict:
    """`record` + SD target columns: colour words -> that colour's pixels, others -> centre blob."""
    keys = list(dict.fromkeys(w.lower() for w in re.findall(r"[^\W_]+", record["target_text"])))
    pixels = np.asarray(Image.open(io.BytesIO(record["image"])).convert("RGB"), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    centre = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 6) ** 2))
    maps = []
    for key in keys:
        if key in COLORS:
            mask = torch.from_numpy((np.abs(pixels - COLORS[key]).sum(-1) < 30).astype(np.float32))
            grid = torch.nn.functional.adaptive_avg_pool2d(mask[None, None], size)[0, 0].numpy()
        else:
            grid = centre
        maps.append((grid - grid.min()) / (grid.max() - grid.min() + 1e-8))
    return dict(record, sd_words=keys, sd_maps=encode_maps(np.stack(maps)), sd_map_size=size)


def tiny_config(family: str, *overrides: str) -> LavenderConfig:
    return load_config(
        "demo",
        [
            f"vlm.family={family}",
            f"vlm.model_id=tiny/{family}",
            f"sd.output_size={MAP_SIZE}",
            "loss.word_source=label",  # a random tiny model predicts no real word
            "lora.dropout=0.0",
            "train.micro_batch_size=2",
            "optim.step_lr_gamma=1.0",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def records() -> list[dict]:
    synthetic = make_synthetic_records(4, seed=0, image_size=64)
    return [with_blob_targets(r, MAP_SIZE) for r in synthetic]


def _module(cfg: LavenderConfig) -> LavenderModule:
    torch.manual_seed(0)
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    aligner = build_aligner(cfg.aligner, adapter.num_heads)
    return LavenderModule(adapter, aligner, cfg.loss, cfg.sd.output_size)


def test_collate_records_builds_inputs_and_targets(records):
    cfg = tiny_config("mllama")
    module = _module(cfg)
    batch = collate_records(records[:2], module.adapter, MAP_SIZE)
    assert len(batch) == 2 and batch.inputs["labels"].shape == batch.inputs["input_ids"].shape
    assert (batch.inputs["labels"] != -100).any(dim=1).all()
    assert batch.sd_words == [records[0]["sd_words"], records[1]["sd_words"]]
    for words, maps in zip(batch.sd_words, batch.sd_maps):
        assert maps.shape == (len(words), MAP_SIZE, MAP_SIZE) and maps.dtype == torch.float32
    with pytest.raises(ValueError, match="sd_map_size=16 but the trainer expects sd.output_size=3"):
        collate_records(records[:1], module.adapter, 32)
    bare = {k: v for k, v in records[0].items() if k != "sd_maps"}
    with pytest.raises(ValueError, match="has no SD targets \\(missing sd_maps\\)"):
        collate_records([bare], module.adapter, MAP_SIZE)
    short = dict(records[0], sd_words=records[0]["sd_words"][:-1])
    with pytest.raises(ValueError, match="sd_words but"):
        collate_records([short], module.adapter, MAP_SIZE)


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_zero_is_exactly_the_plain_lm_loss_and_no_match_gives_zero(family, records):
    cfg = tiny_config(family, "loss.lambda=0")
    module = _module(cfg).eval()
    batch = collate_records(records[:2], module.adapter, MAP_SIZE)
    model_inputs = module.adapter.model_inputs(batch.inputs)
    plain = module.adapter.model(**model_inputs, use_cache=False).loss  # no capture session
    out = module(batch, step=0, total_steps=10)
    assert torch.equal(out.total, plain)
    assert out.metrics["align/matched_words"] > 0 and out.metrics["loss/att"] > 0

    module.loss_cfg = cfg.loss.model_copy(update={"lambda_": 10.0})
    unmatched = TrainBatch(batch.inputs, [["zebra"], ["giraffe"]], [m[:1] for m in batch.sd_maps])
    out = module(unmatched, step=0, total_steps=10)
    assert out.metrics["loss/att"] == 0.0 and out.metrics["align/matched_words"] == 0
    assert torch.equal(out.total, plain)
    out.total.backward()  # finite, and no NaN reaches the weights
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_gradient_reaches_aligner_and_lora_of_captured_layers(family, records):
    # alpha_t = 0 (Aligner pre-training): the total is lambda * L_att alone
    cfg = tiny_config(family, "loss.aligner_pretrain_steps=5", "loss.pretrain_alpha=0")
    module = _module(cfg).train()
    batch = collate_records(records[:2], module.adapter, MAP_SIZE)
    out = module(batch, step=0, total_steps=10)
    assert out.metrics["schedule/alpha"] == 0.0 and out.metrics["align/matched_words"] > 0
    out.total.backward()
    for name, param in module.aligner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    names = dict(module.model.named_parameters())
    for layer in module.adapter.layers:
        prefix = f"language_model.layers.{layer}."
        lora_q = [n for n in names if prefix in n and "q_proj.lora_B" in n]
        assert lora_q, f"no LoRA q_proj in captured layer {layer}"
        for n in lora_q:
            assert names[n].grad is not None and names[n].grad.abs().sum() > 0, n


@pytest.mark.parametrize("family", FAMILIES)
def test_forty_steps_lower_att_with_lambda_and_leave_it_flat_without(family, records):
    def run(lambda_: float) -> tuple[float, float, list[dict]]:
        cfg = tiny_config(family, f"loss.lambda={lambda_}")
        history = fit_local(cfg, records, steps=40).history
        att = [h["loss/att"] for h in history]
        return sum(att[:2]) / 2, sum(att[-2:]) / 2, history  # both batches at start and end

    start, end, history = run(10.0)
    assert end <= 0.7 * start, f"{family}: L_att {start:.4f} -> {end:.4f} with lambda=10"
    assert all(h["align/matched_words"] > 0 for h in history)
    assert {"loss/lm", "loss/att", "loss/total", "align/matched_words"} <= set(history[0])
    flat_start, flat_end, flat_history = run(0.0)
    assert flat_history[0]["loss/att"] == history[0]["loss/att"]  # same seed, same first step
    assert abs(flat_end - flat_start) <= 0.1 * flat_start, (
        f"{family}: L_att {flat_start:.4f} -> {flat_end:.4f} with lambda=0"
    )


def test_save_and_load_trained_round_trip(records, tmp_path):
    cfg = tiny_config("llava", "aligner.norm=batch")
    result = fit_local(cfg, records[:2], steps=2)
    batch = collate_records(records[:2], result.adapter, MAP_SIZE)
    before = LavenderModule(result.adapter, result.aligner, cfg.loss, MAP_SIZE).eval()
    expected = before(batch, step=0, total_steps=2)
    save_trained(tmp_path / "run", result.adapter, result.aligner, cfg)
    loaded_cfg, adapter, aligner = load_trained(tmp_path / "run")
    assert loaded_cfg == cfg
    after = LavenderModule(adapter, aligner, loaded_cfg.loss, MAP_SIZE).eval()
    got = after(batch, step=0, total_steps=2)
    assert got.metrics == expected.metrics
    assert torch.equal(got.total, expected.total)
    with pytest.raises(FileNotFoundError, match="missing vlm, aligner.safetensors, config.yaml"):
        load_trained(tmp_path / "nothing")


def test_optimizer_groups_lr_schedule_and_step(records):
    cfg = tiny_config(
        "mllama", "optim.aligner_lr=0.01", "optim.warmup_steps=2", "optim.step_lr_gamma=0.5"
    )
    module = _module(cfg)
    optimizer = build_optimizer(module, cfg.optim)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"vlm": cfg.optim.lr, "aligner": 0.01}
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all("lora_" in n for n, p in module.model.named_parameters() if id(p) in trainable)
    scheduler = build_lr_scheduler(optimizer, cfg.optim, steps_per_epoch=3)
    factors = [scheduler.lr_lambdas[1](step) for step in range(7)]  # warm-up x gamma**epoch
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * 0.5)  # step 0 applied
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    out = module(collate_records(records[:2], module.adapter, MAP_SIZE), 0, 10)
    grad_norm = optimizer_step(out.total, optimizer, module, grad_clip=1.0)
    assert grad_norm is not None and grad_norm > 0
    changed = {n for n, p in module.named_parameters() if n in before and not p.equal(before[n])}
    assert any(n.startswith("aligner.") for n in changed)
    assert any("lora_B" in n for n in changed)
    out = module(collate_records(records[:2], module.adapter, MAP_SIZE), 1, 10)
    assert optimizer_step(out.total, optimizer, module, grad_clip=0.0) is None  # no clipping


def _bench_module():
    path = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_tiny_path_runs_and_reports_the_ratio(capsys):
    bench = _bench_module()
    assert bench.main(["--families", "llava", "--steps", "1", "--warmup", "0"]) == 0
    line = capsys.readouterr().out
    assert "tiny/llava" in line and re.search(r"ratio \d+\.\d\dx", line)
    assert "words/batch 0.0" not in line  # the Lavender step really aligned words


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_bench_real_size_without_cuda_fails_clearly():
    bench = _bench_module()
    with pytest.raises(SystemExit, match="--real-size needs a CUDA GPU"):
        bench.main(["--real-size"])
