"""Ray job: SD per-word attention targets into a target cache.

    ray job submit --working-dir . -- python jobs/extract.py --preset llama32_11b_lora \\
        --out s3://bucket/lavender/sd-cache --set sd.batch_size=8
"""

from __future__ import annotations

import argparse
import sys

from lavender_ray.cli import add_config_arguments
from lavender_ray.config import load_config
from lavender_ray.pipeline.extract import extract_to_cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="cache root: local path or URI (s3://...)")
    args = parser.parse_args(argv)
    summary = extract_to_cache(load_config(args.preset, args.overrides), args.out)
    print(f"targets: {summary.targets_dir} ({summary.written} new, {summary.cached_before} cached)")
    print(f"rejects: {summary.rejects_dir} {summary.rejects}")
    print(f"config:  {summary.config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
