"""`lavender train`: the streaming pipeline into the Ray Train + DeepSpeed trainer."""

from __future__ import annotations

import argparse

from lavender_ray.cli import add_config_arguments
from lavender_ray.config import load_config

HELP = (
    "train on the connected Ray cluster (RAY_ADDRESS) or a new local one: records -> SD actor "
    "pool -> TorchTrainer with DeepSpeed; re-running the same train.run_name resumes it"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default_preset="demo")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.train.launch import describe, train

    print(describe(train(load_config(args.preset, args.overrides))))
    return 0
