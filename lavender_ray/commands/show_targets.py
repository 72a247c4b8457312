"""`lavender show-targets`: one PNG per sample, the image and a heat overlay per word."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "render SD targets (image + one captioned heat overlay per word) as PNG files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--targets",
        required=True,
        help="an extract --out root, a folder of target shards or one .parquet file",
    )
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--limit", type=int, default=8, help="at most this many samples")
    parser.add_argument("--ids", nargs="*", default=None, help="only these record ids")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: `lavender --help` stays fast (commands/__init__.py)
    from lavender_ray.pipeline.render import write_target_pngs

    paths = write_target_pngs(args.targets, Path(args.out), limit=args.limit, ids=args.ids)
    for path in paths:
        print(path)
    print(f"{len(paths)} picture(s) in {args.out}")
    return 0
