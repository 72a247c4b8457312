"""Ray job: a Ray Tune search (ASHA) over the config; `--resume` continues an interrupted one.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --entrypoint-resources '{"lavender_driver": 1}' -- \\
        python jobs/tune.py --preset cluster_v100_a100 --set tune.num_samples=16

Runs `lavender tune` with the same arguments (`--help` lists them), so a job behaves
exactly as the command does.
"""

from __future__ import annotations

import sys

from lavender_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
