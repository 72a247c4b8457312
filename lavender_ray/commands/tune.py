"""`lavender tune`: a Ray Tune search over the config (ASHA), resumable with `--resume`."""

from __future__ import annotations

import argparse

from lavender_ray.cli import (
    PREFLIGHT_HELP,
    add_config_arguments,
    add_verbose_argument,
    resumable_config,
)
from lavender_ray.commands.plan import NO_PLAN_HELP, check_before_start

HELP = (
    "search hyperparameters with Ray Tune + ASHA (tune.search_space: dotted keys -> "
    "'loguniform(1, 30)', 'choice([...])', ...); writes a trials table and best.yaml; the "
    "console shows the trials done, Ray's and Tune's own output goes to <experiment>/logs/ "
    "(--verbose: on the console instead). " + PREFLIGHT_HELP
)
INTERRUPTED = ("the search continues with `lavender tune --resume --set "
               "train.run_name=<experiment>`: finished trials are kept")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default_preset=None, default_help="demo; with --resume, the "
                         "experiment's own config, its tune_config.yaml")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the interrupted experiment named by train.run_name (and "
        "train.storage_path), with the config it was started with: `--resume --set "
        "train.run_name=NAME` is enough; a --preset or other --set values must give that same "
        "config",
    )  # fmt: skip
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a new local Ray)"
    )
    parser.add_argument("--no-plan", action="store_true", help=NO_PLAN_HELP + "; the plan takes "
                        "the largest value of each number the search space samples")
    add_verbose_argument(parser, "<experiment>/logs/")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.console import Console
    from lavender_ray.pipeline.preflight import check_sources
    from lavender_ray.runs import LOGS_DIR, run_dir_of
    from lavender_ray.tune.layout import layout_of

    cfg = resumable_config(args, lambda named: layout_of(named).config)
    check_sources(cfg)  # before Ray starts: a missing file or model folder is one line
    if not args.no_plan:  # the largest value of each searched number: batch sizes, LoRA rank
        check_before_start(cfg, searched=True)
    from lavender_ray.tune.experiment import describe, run_tune  # Ray Tune: after the checks

    with Console("tune", f"{run_dir_of(cfg)}/{LOGS_DIR}", args.verbose):  # the experiment
        summary = run_tune(cfg, resume=args.resume, address=args.address)
        print(describe(summary))
    return 1 if summary.interrupted else 0
