"""Run a script on two DeepSpeed ranks (`torch.distributed.run`, CPU), for the tests that need
real collectives without Ray Train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_two_ranks(script: str, workdir: Path, port: int, *args: str,
                  timeout_s: float = 280) -> list[dict]:
    """`script` (Python source) run by two ranks in `workdir` with `args`; the JSON object each
    rank prints after `RESULT `. Fails the test unless both ranks print one and exit 0."""
    path = workdir / "ranks.py"
    path.write_text(script)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(port), str(path), *args]
    run = subprocess.run(command, env={**os.environ, "DS_ACCELERATOR": "cpu"}, cwd=workdir,
                         capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and len(lines) == 2, run.stderr[-3000:]
    return [json.loads(line[len("RESULT "):]) for line in lines]
