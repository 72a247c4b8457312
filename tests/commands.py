"""Run `lavender` as a user runs it, for the tests that drive the command line end to end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class Lavender:
    """`lavender ARGS` started from `cwd` in its own session, pinned to two cores (`taskset`,
    when the machine has more) and with a fresh local Ray in its own temp dir, as a 2-core
    machine runs it. Its stdout and stderr go to a file (a pipe left unread could fill up)."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.args = args
        command = [str(Path(sys.executable).with_name("lavender")), *args]
        if shutil.which("taskset") and len(os.sched_getaffinity(0)) > 2:
            command = ["taskset", "-c", "0,1", *command]
        env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="lv-", dir="/tmp"),
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "DS_ACCELERATOR": "cpu"}
        env.pop("RAY_ADDRESS", None)
        self.output = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self.output,
                                        stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)

    def finish(self, timeout_s: float, exit_code: int = 0) -> str:
        """Its output once it exits; fails the test unless it exits with `exit_code`."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.output.seek(0)
        output = self.output.read()
        self.output.close()
        command = f"lavender {' '.join(self.args)}"
        assert self.process.returncode is not None, f"{command} ran over {timeout_s} s"
        assert self.process.returncode == exit_code, (
            f"{command} exited {self.process.returncode}, not {exit_code}:\n{output[-4000:]}")
        return output


def run_lavender(cwd: Path, *args: str, timeout_s: float = 420, exit_code: int = 0) -> str:
    """`lavender ARGS` (see `Lavender`); its stdout + stderr once it exits with `exit_code`."""
    return Lavender(cwd, *args).finish(timeout_s, exit_code)


def interrupt_when(
    cwd: Path, marker: Path, *args: str, timeout_s: float = 420, exit_code: int = 1
) -> str:
    """`lavender ARGS` interrupted as Ctrl-C does (SIGINT) once `marker` exists; its output
    once it exits with `exit_code` (`tune`: 1, its summary says what is unfinished; `train`:
    130)."""
    lavender = Lavender(cwd, *args)
    deadline = time.monotonic() + timeout_s
    while not marker.exists() and lavender.process.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not marker.exists():
        lavender.process.kill()
        code = lavender.process.wait()
        output = lavender.finish(60, exit_code=code)
        raise AssertionError(f"{marker} never appeared (exit {code}):\n{output[-4000:]}")
    lavender.process.send_signal(signal.SIGINT)
    return lavender.finish(max(deadline - time.monotonic(), 120), exit_code=exit_code)
