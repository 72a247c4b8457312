"""`lavender demo`: the main job on an embedded local Ray with tiny models."""

from __future__ import annotations

import argparse
import time

from lavender_ray.cli import add_config_arguments, add_verbose_argument
from lavender_ray.config import load_config

HELP = (
    "run the whole method on an embedded local Ray with tiny models: synthetic data -> tiny SD "
    "actor pool -> 2-worker DeepSpeed ZeRO-2 trainer on tiny Mllama -> adapter, PNG attention "
    "report and an evaluation of base vs adapter on the synthetic benchmark; the console shows "
    "progress and the summary, Ray's and DeepSpeed's own output goes to <run>/logs/ "
    "(--verbose: on the console instead)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default_preset="demo")
    add_verbose_argument(parser, "<run>/logs/")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.console import Console
    from lavender_ray.rejects import format_counts
    from lavender_ray.runs import LOGS_DIR, run_dir_of

    overrides = list(args.overrides)
    if not any(o.startswith("train.run_name=") for o in overrides):
        # a new run each time (the same run name would resume the previous run)
        overrides.append(f"train.run_name=demo-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = load_config(args.preset, overrides)
    from lavender_ray.demo import run_demo  # Ray, torch: after a mistyped preset or key is told

    with Console("demo", f"{run_dir_of(cfg)}/{LOGS_DIR}", args.verbose):
        out = run_demo(cfg)
        print("\n== lavender demo: done ==")
        keys = ["loss/total", "loss/lm", "loss/att", "align/matched_words", "records"]
        print("final metrics: " + "  ".join(f"{k}={out.final_metrics[k]:.4g}" for k in keys
                                            if k in out.final_metrics))
        total = sum(out.rejects.values())
        print(f"rejected records: {total}"
              + (f" ({format_counts(out.rejects)})" if total else ""))
        print(f"outputs:        {out.run_dir}")
        print(f"  config:       {out.run_dir / 'config.yaml'}")
        for path in out.data:
            print(f"  data:         {path}  (synthetic records, Parquet)")
        print(f"  adapter:      {out.adapter}  (PEFT adapter + aligner.safetensors + config.yaml)")
        print(f"  metrics:      {out.metrics}")
        print(f"  checkpoints:  {out.run_dir}/checkpoint_step*/  (DeepSpeed state of every rank)")
        print(f"  report:       {out.run_dir / 'report'}/  ({len(out.report)} PNGs: image | SD | VLM | aligned)")
        print(f"  evaluation:   {out.run_dir / 'eval'}/  (base model vs adapter, synthetic benchmark)")
        print("\n" + out.evaluation)
    return 0
