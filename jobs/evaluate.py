"""Ray job: evaluate a trained run against its base model (benchmarks + attention probe).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/evaluate.py --preset llama32_11b_lora --adapter /shared/runs/x/adapter \\
        --bench TextVQA_VAL,synthetic --set 'eval.benchmarks={TextVQA_VAL: /shared/TextVQA_VAL.tsv}'
"""

from __future__ import annotations

import argparse
import sys

from lavender_ray.cli import add_config_arguments
from lavender_ray.config import load_config
from lavender_ray.eval.evaluate import describe, evaluate, split_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--adapter", required=True, help="saved run directory every node sees")
    parser.add_argument("--bench", required=True, help="comma-separated benchmark names")
    parser.add_argument("--out", default=None, help="report folder (default: <adapter>/eval-*)")
    args = parser.parse_args(argv)
    cfg = load_config(args.preset, args.overrides)
    print(describe(evaluate(cfg, args.adapter, split_names(args.bench), args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
