"""The project's warnings from Ray workers: the job's worker setup hook marks them on the
worker's stderr (one JSON line each), and the driver's handler of forwarded worker output
(`WorkerOutput`) logs every line and shows each marked warning once."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

from lavender_ray.console.logs import PACKAGE, in_package

WORKER_MARK = "<<lavender_ray>> "  # starts a worker's marked warning line (one JSON object)
SETUP_HOOK = "lavender_ray.console.workers.mark_worker_warnings"
# What Ray's driver prints for the raylet that this project's runs cause by design: its actor
# pools and fractional-CPU tasks start more Python workers than a small machine has cores.
RAYLET_EXPECTED = ("PYTHON worker processes have been started",)


def mark_worker_warnings() -> None:
    """Ray worker setup hook (`ray_init_options`): warnings of `lavender_ray` loggers, and
    Python warnings raised in `lavender_ray` code, also go to stderr as one marked JSON line
    each, which the driver's quiet console shows (`WorkerOutput`). Idempotent."""
    logger = logging.getLogger(PACKAGE)
    if any(isinstance(h, _MarkedLines) for h in logger.handlers):
        return
    logger.addHandler(_MarkedLines())
    shown = warnings.showwarning

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if in_package(filename):
            _write_marked("WARNING", f"{category.__name__}", str(message))
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show_warning


def _write_marked(level: str, name: str, message: str) -> None:
    record = {"level": level, "name": name, "message": message}
    sys.stderr.write(WORKER_MARK + json.dumps(record) + "\n")
    sys.stderr.flush()


class _MarkedLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            _write_marked(record.levelname, record.name, message)
        except Exception:
            self.handleError(record)


def worker_name(data: dict[str, Any]) -> str:
    """Ray's prefix for a worker's lines: `RayTrainWorker pid=12`, `pid=34, ip=10.0.0.2`."""
    name = data.get("actor_name") or data.get("task_name") or ""
    where = f"{name} pid={data.get('pid')}".strip()
    ip = data.get("ip")
    return where if not ip or ip == data.get("localhost") else f"{where}, ip={ip}"


class WorkerOutput:
    """A handler of the worker output Ray forwards to the driver (one dict per batch of lines:
    `pid`, `ip`, `actor_name`/`task_name`, `lines`, ...): every line to `log` with Ray's
    prefix, each distinct marked warning once to `show` as `warning [<worker>]: <message>`."""

    def __init__(self, log: Callable[[str], None], show: Callable[[str], None]) -> None:
        self.log, self.show = log, show
        self.shown: set[str] = set()

    def __call__(self, data: dict[str, Any]) -> None:
        if data.get("pid") == "autoscaler":  # its status every few seconds: Ray's own log has it
            return
        where = worker_name(data)
        for line in data.get("lines", []):
            self.log(f"({where}) {line}")
            if not line.startswith(WORKER_MARK):
                continue
            try:
                marked = json.loads(line[len(WORKER_MARK):])
                text = f"{marked['level'].lower()} [{where}]: {marked['message']}"
            except (ValueError, KeyError, AttributeError):
                continue
            if marked["message"] not in self.shown:
                self.shown.add(marked["message"])
                self.show(text)


def raylet_expected(data: dict[str, Any]) -> bool:
    """A message Ray's driver prints for the raylet (`pid == "raylet"`) whose every line is
    expected in this project's runs (`RAYLET_EXPECTED`): for the log, not the console. Other
    raylet messages (a worker killed, memory pressure) stay on the console."""
    lines = data.get("lines") or []
    return (data.get("pid") == "raylet" and bool(lines)
            and all(any(text in line for text in RAYLET_EXPECTED) for line in lines))
