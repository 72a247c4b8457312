"""`lavender config show`: print the resolved config of a preset plus overrides."""

from __future__ import annotations

import argparse

from lavender_ray.cli import add_config_arguments
from lavender_ray.config import load_config, preset_names

HELP = "show the resolved config (preset + --set overrides) as YAML, or list presets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved YAML config")
    add_config_arguments(show)
    sub.add_parser("presets", help="list the shipped presets")


def run(args: argparse.Namespace) -> int:
    if args.action == "presets":
        print("\n".join(preset_names()))
        return 0
    print(load_config(args.preset, args.overrides).to_yaml(), end="")
    return 0
