"""Ray job: a Ray Tune search (ASHA) over the config; `--resume` continues an interrupted one.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --entrypoint-resources '{"lavender_driver": 1}' -- \\
        python jobs/tune.py --preset cluster_v100_a100 --set tune.num_samples=16
"""

from __future__ import annotations

import argparse
import sys

from lavender_ray.cli import add_config_arguments
from lavender_ray.config import load_config
from lavender_ray.tune import describe, run_tune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search")
    args = parser.parse_args(argv)
    summary = run_tune(load_config(args.preset, args.overrides), resume=args.resume)
    print(describe(summary))
    return 1 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
