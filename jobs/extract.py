"""Ray job: SD per-word attention targets into a target cache.

    ray job submit --working-dir . -- python jobs/extract.py --preset llama32_11b_lora \\
        --out s3://bucket/lavender/sd-cache --set sd.batch_size=8

Runs `lavender extract` with the same arguments (`--help` lists them), so a job behaves
exactly as the command does.
"""

from __future__ import annotations

import sys

from lavender_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
