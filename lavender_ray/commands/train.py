"""`lavender train`: the streaming pipeline into the Ray Train + DeepSpeed trainer."""

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
    "train on the Ray cluster of RAY_ADDRESS / --address, or a new local Ray sized to the run: "
    "records -> checks -> SD actor pool (pipeline.mode=stream, the default; pipeline.mode=cache "
    "computes each target once) -> TorchTrainer with DeepSpeed (later epochs replay the first "
    "from memory when it fits pipeline.replay_mb on every worker, else run all this again), into "
    "<train.storage_path>/<train.run_name> (a new run name each time unless you set one); the "
    "console shows a progress bar (steps, loss, samples/s, ETA), Ray's and DeepSpeed's own "
    "output goes to <run>/logs/ (--verbose: on the console instead); metrics go to "
    "<run>/metrics.jsonl and to the trackers of train.report_to=[tensorboard,mlflow,wandb]. "
    "Ctrl-C stops the run at its last checkpoint (exit code 130); --resume continues it. "
    + PREFLIGHT_HELP
)
# what Ctrl-C before the trainer starts says (in `fit()`, `TrainingInterrupted` names the run)
INTERRUPTED = ("a run that has started continues from its last checkpoint with `lavender train "
               "--resume --set train.run_name=<its name>`")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default_preset=None, default_help="demo; with --resume, the "
                         "config the run was started with, its config.yaml")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run named by train.run_name (and train.storage_path) from its newest "
        "complete checkpoint (Ctrl-C prints which, and this command), with the config it was "
        "started with: `--resume --set "
        "train.run_name=NAME` is enough; a --preset or other --set values must give that same "
        "config (a run with no checkpoint yet starts again at step 0 with the config given). "
        "A run that has finished is not trained again: its summary is printed",
    )  # fmt: skip
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a new local Ray)"
    )
    parser.add_argument("--no-plan", action="store_true", help=NO_PLAN_HELP)
    add_verbose_argument(parser, "<run>/logs/")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.config import CONFIG_FILE, ConfigError
    from lavender_ray.console import Console
    from lavender_ray.pipeline.preflight import check_sources
    from lavender_ray.runs import LOGS_DIR, check_run, run_dir_of

    cfg = resumable_config(args, lambda named: f"{run_dir_of(named)}/{CONFIG_FILE}")
    check_sources(cfg)  # before Ray starts: a missing file, a source of rejects: one line
    check_run(cfg, run_dir_of(cfg), args.resume)  # a reused or missing run too, before the plan
    if not args.no_plan:
        check_before_start(cfg)  # refuses (exit 2) before any node starts
    # Ray, torch: after the checks above
    from lavender_ray.train.launch import describe, failure_note, train

    with Console("train", f"{run_dir_of(cfg)}/{LOGS_DIR}", args.verbose):
        try:
            summary = train(cfg, resume=args.resume, address=args.address)
        except Exception as err:
            note = None if isinstance(err, ConfigError) else failure_note(cfg)
            if note:
                err.add_note(note)  # printed under the error's line
            raise
        print(describe(summary))
    return 0
