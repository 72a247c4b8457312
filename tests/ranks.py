"""Run a script on two DeepSpeed ranks (`torch.distributed.run`, CPU), for the tests that need
real collectives without Ray Train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Each rank hands its result back in a file of its own, not on the shared stdout pipe, where a
# line can be lost or glued to another process's output.
PRELUDE = '''
def report(result):
    import json, os
    path = os.path.join(os.environ["RANK_RESULTS"], f"rank{os.environ['RANK']}.json")
    with open(path + ".part", "w") as out:
        json.dump(result, out)
    os.replace(path + ".part", path)
'''


def run_two_ranks(script: str, workdir: Path, port: int, *args: str,
                  timeout_s: float = 280) -> list[dict]:
    """`script` (Python source) run by two ranks in `workdir` with `args`; the object each rank
    passes to `report(...)` (defined for the script), by rank. Fails the test, showing the exit
    status and both output streams, unless both ranks report and the launcher exits 0."""
    path, results = workdir / "ranks.py", workdir / "rank-results"
    path.write_text(PRELUDE + script)
    results.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(port), str(path), *args]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK_RESULTS": str(results)}
    run = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True,
                         timeout=timeout_s)
    files = [results / f"rank{rank}.json" for rank in range(2)]
    assert run.returncode == 0 and all(f.exists() for f in files), (
        f"exit {run.returncode}; reported: {sorted(f.name for f in results.iterdir())}\n"
        f"stdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr[-3000:]}")
    return [json.loads(f.read_text()) for f in files]
