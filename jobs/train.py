"""Ray job: train Lavender (SD targets streamed into a Ray Train + DeepSpeed trainer).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train.py --preset llama32_11b_lora --set train.storage_path=s3://bucket/runs

Runs `lavender train` with the same arguments (`--help` lists them), so a job behaves
exactly as the command does.
"""

from __future__ import annotations

import sys

from lavender_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
