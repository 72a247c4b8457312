"""Ray job: evaluate a trained run against its base model (benchmarks + attention probe).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/evaluate.py --preset llama32_11b_lora --adapter /shared/runs/x/adapter \\
        --bench TextVQA_VAL,synthetic --set 'eval.benchmarks={TextVQA_VAL: /shared/TextVQA_VAL.tsv}'

Runs `lavender evaluate` with the same arguments (`--help` lists them), so a job behaves
exactly as the command does.
"""

from __future__ import annotations

import sys

from lavender_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
