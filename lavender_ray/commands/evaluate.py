"""`lavender evaluate`: a trained run vs its base model on benchmarks and the attention probe."""

from __future__ import annotations

import argparse

from lavender_ray.cli import add_config_arguments, add_verbose_argument
from lavender_ray.config import load_config

HELP = (
    "evaluate a trained run (--adapter RUN) against its base model: benchmark metrics by Ray Data "
    "batch inference, attention alignment with SD maps, Markdown/JSON report with PNG grids; "
    "the console shows the rows answered by both models as they come, Ray's own output goes to "
    "<out>/logs/ (--verbose: on the console instead)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser, default_preset=None,
        default_help="the config the run was trained with (its config.yaml: its model, eval "
        "section and probe settings); --set applies on top",
    )  # fmt: skip
    parser.add_argument(
        "--adapter", required=True, metavar="RUN",
        help="the trained run: its run folder (<storage>/<run_name>: its adapter/, else the "
        "latest checkpoint's export/), a checkpoint_step<N>/ folder, or a saved run (vlm/ + "
        "aligner.safetensors + config.yaml); a folder, not a URI, on a shared mount when the "
        "cluster has several nodes",
    )  # fmt: skip
    parser.add_argument(
        "--bench", default=None,
        help="comma-separated keys of eval.benchmarks, or 'synthetic' (generated on the fly); "
        "default: every key of eval.benchmarks, else 'synthetic'",
    )  # fmt: skip
    parser.add_argument(
        "--out", default=None,
        help="report folder, not a URI (default: <RUN>/eval-<timestamp>)",
    )
    add_verbose_argument(parser, "<out>/logs/")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.config import CONFIG_FILE
    from lavender_ray.console import Console
    from lavender_ray.data.checks import check_model_folders
    from lavender_ray.eval.evaluate import (
        default_out_dir,
        describe,
        evaluate,
        split_names,
        trained_run,
    )
    from lavender_ray.runs import LOGS_DIR

    # the run's own config unless a preset is given: its model, eval section and probe settings
    preset = args.preset or str(trained_run(args.adapter).saved_run / CONFIG_FILE)
    cfg = load_config(preset, args.overrides)
    check_model_folders(cfg)  # before Ray starts: one line, at once
    names = split_names(args.bench) if args.bench else list(cfg.eval.benchmarks) or ["synthetic"]
    out = args.out or str(default_out_dir(args.adapter))
    with Console("evaluate", f"{out.rstrip('/')}/{LOGS_DIR}", args.verbose):
        report = evaluate(cfg, args.adapter, names, out)
        print(f"adapter:     {report.adapter}\n{describe(report)}")
    return 0
