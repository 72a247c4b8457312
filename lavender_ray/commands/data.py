"""`lavender data inspect`: counts per source, rejects per reason, a few decoded samples and a
PNG contact sheet of the configured data mixture (`lavender_ray.pipeline.inspect`)."""

from __future__ import annotations

import argparse
import sys

from lavender_ray.cli import add_config_arguments, add_verbose_argument
from lavender_ray.config import load_config

HELP = "inspect the configured data sources: counts, rejects, samples, a PNG contact sheet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="read the sources once and report what they yield")
    add_config_arguments(inspect)
    inspect.add_argument("--out", default="outputs/data_inspect",
                         help="local folder for the contact sheet and rejects, on a shared "
                         "mount when the cluster has several nodes (default: outputs/data_inspect)")
    inspect.add_argument("--samples", type=int, default=2,
                         help="decoded samples shown per source (default: 2)")
    inspect.add_argument("--address", default=None,
                         help="Ray address (default: RAY_ADDRESS or a local Ray)")
    add_verbose_argument(inspect, "<out>/logs/")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.console import Console
    from lavender_ray.data.checks import check_input_paths
    from lavender_ray.pipeline.inspect import format_report, inspect_data
    from lavender_ray.resources import connect
    from lavender_ray.runs import LOGS_DIR

    if args.samples < 0:
        print(f"lavender data inspect: --samples must be >= 0, got {args.samples}", file=sys.stderr)
        return 2
    cfg = load_config(args.preset, args.overrides)
    check_input_paths(cfg)  # before Ray starts: a missing file is one line, at once
    with Console("inspect", f"{args.out.rstrip('/')}/{LOGS_DIR}", args.verbose):
        connect(cfg, "inspect", args.address)
        report = inspect_data(cfg, args.out, samples=args.samples)
        print(format_report(report))
    return 0 if any(s.records for s in report.sources.values()) else 1
