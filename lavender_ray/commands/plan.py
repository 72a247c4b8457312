"""`lavender plan`: before any node starts, whether a preset's train workers and SD actors fit
the GPUs it places them on, how fast each runs, and how many SD actors keep the trainer fed."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lavender_ray.cli import add_config_arguments

if TYPE_CHECKING:
    from lavender_ray.config import LavenderConfig

HELP = ("size a preset before a cluster starts: GPU memory of a train worker and an SD actor per "
        "GPU type (V100 16/32 GB, A100 40/80 GB, H100 80 GB, or the type the preset names), "
        "their speed, the SD pool that keeps the trainer fed; exits 2 if it cannot fit")

EPILOG = """\
Activations are measured, not guessed: the worst-case sample (vlm.max_length tokens, a
1120x1120 px image) runs on this machine's CPU through copies of the model with one and two
layers of each kind at two narrowed widths, scaled to full depth and width. Nothing is
downloaded but config and processor files; the paper's models plan offline from their
published architectures. Llama-3.2-11B-Vision at 1024 tokens takes about 4 minutes on 2 cores
and 6 GiB of RAM, once: measurements are cached in ~/.cache/lavender_ray/plan
($LAVENDER_PLAN_CACHE). `lavender train` and `lavender tune` run the same check before they
start Ray when the preset puts the trainer or the SD actors on GPUs (`tune` with the largest
value of each numeric key it searches).

examples:
  lavender plan --preset llama32_11b_lora
  lavender plan --preset cluster_v100_a100 --set train.micro_batch_size=2
  lavender plan --preset mine.yaml --set train.accelerator=A100-40G
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default_preset="llama32_11b_lora")
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    from lavender_ray.config import load_config

    cfg = load_config(args.preset, args.overrides)  # a mistyped preset or key: told in a second
    from lavender_ray.plan import build_plan  # torch, transformers, diffusers: 6 s on 2 cores

    plan = build_plan(cfg, progress=lambda line: print(line + "...", flush=True))
    print(plan.describe())
    plan.check()  # a ConfigError: the reasons, exit 2
    if not plan.on_gpu:
        print("\nplan: nothing in this preset runs on a GPU, so there is no GPU memory to size "
              "(set train.use_gpu=true and/or pipeline.sd_num_gpus=1 to plan them)")
        return 0
    left_out = " (stages without figures for their GPU type are named above)" if plan.notes else ""
    print(f"\nplan: every GPU stage fits on at least one of the GPU types it may run on{left_out}")
    return 0


NO_PLAN_HELP = ("skip the GPU memory plan (`lavender plan`) that runs before Ray starts when the "
                "preset puts the trainer or the SD actors on GPUs (it measures on this machine's "
                "CPU, once per model and settings: about 4 minutes and 6 GiB of RAM at 11B)")


def check_before_start(cfg: LavenderConfig, searched: bool = False) -> None:
    """`train`/`tune`: when `cfg` puts the trainer or the SD actors on GPUs, its plan (`searched`:
    with each number `tune.search_space` samples at its largest, `SearchSpace.largest`);
    refuses (`ConfigError`, exit 2) before any node starts, else prints its summary."""
    from lavender_ray.placement import gpu_stages  # light: the plan below imports torch

    if not any(gpu_stages(cfg)):
        return
    from lavender_ray.config import LavenderConfig, apply_overrides
    from lavender_ray.plan import build_plan

    largest = {}
    if searched:
        from lavender_ray.tune.space import parse_search_space

        largest = parse_search_space(cfg.tune.search_space, cfg.to_dict()).largest()
    if largest:
        cfg = LavenderConfig.from_dict(apply_overrides(cfg.to_dict(), largest))
        shown = ", ".join(f"{k}={v}" for k, v in largest.items())
        print(f"plan: the searched keys at their largest values: {shown}", flush=True)
    plan = build_plan(cfg, progress=lambda line: print(f"plan: {line}...", flush=True))
    plan.check()
    print(plan.summary())
