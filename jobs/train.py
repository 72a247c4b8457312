"""Ray job: train Lavender (SD targets streamed into a Ray Train + DeepSpeed trainer).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train.py --preset llama32_11b_lora --set train.storage_path=s3://bucket/runs
"""

from __future__ import annotations

import argparse
import sys

from lavender_ray.cli import add_config_arguments
from lavender_ray.config import load_config
from lavender_ray.train.launch import describe, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    print(describe(train(load_config(args.preset, args.overrides))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
