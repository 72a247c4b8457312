"""The bf16 DeepSpeed path the GPU runs take, on CPU: the config `deepspeed_config` builds for
bf16 initialises and steps under ZeRO 1, 2 and 3 (and 3 with activation checkpointing) with the
real `LavenderModule` (tiny Mllama, LoRA, Aligner). In one subprocess, an engine per setting in
turn: DeepSpeed needs a process group of its own, and one process imports the stack once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from lavender_ray.config import load_config
from lavender_ray.train.precision import deepspeed_config

pytestmark = pytest.mark.slow  # DeepSpeed engines under ZeRO 1-3, in subprocesses

SCRIPT = r"""
import json
import torch, deepspeed
from lavender_ray.config import load_config
from lavender_ray.eval.attention import synthetic_probe_records
from lavender_ray.align import build_aligner
from lavender_ray.train.step import build_optimizer, collate_records, LavenderModule
from lavender_ray.train.precision import deepspeed_config
from lavender_ray.train.worker import cast_inputs
from lavender_ray.vlm import build_adapter

SETTINGS = [(1, False), (2, False), (3, False), (3, True)]


def steps(stage, checkpointing):
    cfg = load_config("demo", ["loss.word_source=label", f"train.zero_stage={stage}",
                               "train.grad_accum_steps=2",
                               f"vlm.gradient_checkpointing={str(checkpointing).lower()}"])
    torch.manual_seed(0)
    adapter = build_adapter(cfg.vlm, cfg.lora, cfg.sd.output_size)
    module = LavenderModule(adapter, build_aligner(cfg.aligner, adapter.num_heads), cfg.loss,
                            cfg.sd.output_size)
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=build_optimizer(module, cfg.optim),
        config=deepspeed_config(cfg, 1, "bf16"))
    records = synthetic_probe_records(cfg, 2)
    losses = []
    for step in range(4):
        batch = collate_records(records[step % 2:step % 2 + 1], adapter, cfg.sd.output_size)
        out = engine(cast_inputs(batch, engine.device, torch.bfloat16), step, 4)
        engine.backward(out.total)
        engine.step()
        losses.append([float(out.metrics["loss/lm"]), float(out.metrics["loss/att"])])
    aligner_dtype = str(module.aligner.net[0].weight.dtype)
    engine.destroy()
    return {"losses": losses, "aligner_dtype": aligner_dtype}


print("RESULT", json.dumps({f"zero {stage}, checkpointing {ckpt}": steps(stage, ckpt)
                            for stage, ckpt in SETTINGS}))
"""


def test_bf16_config_accumulates_in_fp32_under_zero_only():
    cfg = load_config("demo", ["train.zero_stage=2"])
    assert deepspeed_config(cfg, 2, "bf16")["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in deepspeed_config(cfg, 2, "fp32")
    stage0 = load_config("demo", ["train.zero_stage=0"])
    assert "data_types" not in deepspeed_config(stage0, 2, "bf16")


@pytest.mark.timeout(600)
def test_bf16_deepspeed_steps_the_lavender_module_under_zero_1_2_and_3(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29651",
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=540)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    results = json.loads(lines[0][len("RESULT "):])
    assert list(results) == ["zero 1, checkpointing False", "zero 2, checkpointing False",
                             "zero 3, checkpointing False", "zero 3, checkpointing True"]
    for setting, result in results.items():
        # DeepSpeed cast the Aligner to bf16; it computes in fp32
        assert result["aligner_dtype"] == "torch.bfloat16", setting
        for lm, att in result["losses"]:
            assert lm > 0 and att > 0 and math.isfinite(lm) and math.isfinite(att), setting
