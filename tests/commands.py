"""Run `lavender` as a user runs it, for the tests that drive the command line end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def run_lavender(cwd: Path, *args: str, timeout_s: float = 420) -> str:
    """`lavender ARGS` run from `cwd` in its own session, pinned to two cores (`taskset`, when
    the machine has more) and with a fresh local Ray in its own temp dir, as a 2-core machine
    runs it. Returns stdout + stderr; fails the test on a non-zero exit."""
    command = [str(Path(sys.executable).with_name("lavender")), *args]
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) > 2:
        command = ["taskset", "-c", "0,1", *command]
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="lv-", dir="/tmp"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s, start_new_session=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"lavender {' '.join(args)} exited {done.returncode}:\n{output[-4000:]}"
    return output
