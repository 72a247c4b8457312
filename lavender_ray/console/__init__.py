"""The console of a `lavender` command: the project's own output on the terminal, Ray's and
DeepSpeed's in a log file; `--verbose` shows everything as before.

This module holds the state (one console per process) and `Console`; its pieces are `logs` (the
log file and the logging handlers that feed it), `workers` (the project's warnings from Ray
workers) and `display` (progress bars and lines).

    with Console("train", f"{run_dir}/logs", verbose=False):     # commands/*.py
        connect(cfg, "train")   # ray.init(**ray_init_options()), then after_ray_init()
        with progress("train", total=30, unit="steps") as shown:
            shown.set(3, fields=["loss 6.41"])

Quiet (the default), while the command runs:
- every logging handler outside `lavender_ray` that writes to the terminal (Ray, Ray Data, Ray
  Train, Ray Tune, DeepSpeed, transformers, ...) writes to `<log dir>/<command>-<time>.log`
  instead, and so does Python's handler of last resort (`ray.init(configure_logging=False)`
  leaves the `ray` logger without handlers); records of `lavender_ray` loggers stay on the
  console;
- Python warnings raised from `lavender_ray` code stay on the console, others go to the log;
- what C and C++ code writes to the process's stderr (file descriptor 2: Ray's core worker,
  the raylet and the other processes `ray.init` starts) goes to the log; Python's `sys.stderr`
  keeps the terminal through a duplicate of it (`logs.NativeStderr`);
- Ray Data's progress bars are off (set before any Dataset exists: a Dataset keeps the context
  it was made with, also in the actors that run it); Ray Tune runs with `verbose=0` (`quiet()`);
- after `ray.init`, the output Ray forwards from every worker of the job (`log_to_driver`) goes
  to the log with Ray's `(Actor pid=N)` prefix; warnings of `lavender_ray` loggers and Python
  warnings of `lavender_ray` code in workers are marked by the job's worker setup hook
  (`mark_worker_warnings`) and shown once each on the console (`WorkerOutput`).

The log file is made when something is first written to it and named on the console when the
command ends (`logs: ...`); a log folder that is a URI (`s3://...`) gets the file uploaded then.
Ray's own per-process logs stay in its session folder (`/tmp/ray/session_*/logs`, named in the
log file).

`--verbose` (`Console(..., verbose=True)`) changes none of the above: Ray prints what it prints.
Progress displays (`progress`) are live tqdm bars when quiet on a terminal, plain lines otherwise
(`--verbose`, or output to a file or pipe). Outside a command (library calls, Ray workers) no
console is active: the displays are silent and nothing is rerouted.
"""


from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

from lavender_ray.console.display import (
    PLAIN_EVERY_S,
    Progress,
    eta_seconds,
    format_duration,
    format_rate,
)
from lavender_ray.console.logs import (
    PACKAGE,
    ConsoleHandler,
    LogFile,
    LogFileHandler,
    LogStream,
    NativeStderr,
    in_package,
    in_package_logger,
    writes_to_terminal,
)
from lavender_ray.console.workers import (
    SETUP_HOOK,
    WORKER_MARK,
    WorkerOutput,
    mark_worker_warnings,
    raylet_expected,
)

__all__ = [
    "Console", "LogFile", "Progress", "SETUP_HOOK", "WORKER_MARK", "WorkerOutput", "active",
    "after_ray_init", "eta_seconds", "format_duration", "format_rate", "mark_worker_warnings",
    "polling",
    "progress", "quiet", "ray_init_options", "stdout_to_log",
]

_active: Console | None = None


# ------------------------------------------------------------------------------------ state
def active() -> bool:
    """Whether a command's console is active in this process (quiet or verbose)."""
    return _active is not None


def quiet() -> bool:
    """Whether a command's console is active and quiet (not `--verbose`)."""
    return _active is not None and not _active.verbose


def ray_init_options() -> dict[str, Any]:
    """Extra `ray.init` arguments: with a quiet console, the job's worker setup hook that marks
    the project's warnings in workers (`mark_worker_warnings`). Not added inside a submitted
    job whose runtime env has a setup hook already (Ray refuses to merge two)."""
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    if not quiet() or "worker_process_setup_hook" in job_config:
        return {}
    return {"runtime_env": {"worker_process_setup_hook": SETUP_HOOK}}


def after_ray_init() -> None:
    """With a quiet console, take over the output Ray forwards from workers (see the module
    docstring). Called by `resources.connect` after `ray.init`; idempotent."""
    if quiet():
        _active._capture_workers()


@contextmanager
def stdout_to_log() -> Iterator[None]:
    """With a quiet console, what is printed to stdout while the block runs goes to the log
    file: Ray Tune's experiment banner (which `verbose=0` leaves) and the warnings Ray's
    driver prints for the raylet. For blocks where the project prints nothing to stdout."""
    if not quiet():
        yield
        return
    stream = LogStream(_active.log)
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        stream.flush()


@contextmanager
def short_warnings(stream: TextIO | None = None) -> Iterator[None]:
    """For a command without a log file (`export`): a Python warning raised from
    `lavender_ray` code is one `warning: ...` line on `stream` (stderr), not Python's
    file:line and source line; other warnings show as Python shows them."""
    shown = warnings.showwarning

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if in_package(filename):
            print(f"warning: {message}", file=stream or sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show_warning
    try:
        yield
    finally:
        warnings.showwarning = shown


def failure_line(error: BaseException) -> str:
    """What went wrong, in one line: the exception's type and the last line of its message; for
    an error a Ray worker raised (its traceback in the message), that worker's exception and
    the ranks it names (`[Rank 0,1 Error Snippet]`), else where in the code it was raised."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else "(no message)"
    if "Traceback (most recent call last)" in text:  # raised in a Ray worker or task
        ranks = re.search(r"\[Rank ([\d,]+) Error Snippet\]", text)
        return f"{type(error).__name__}{f' on rank {ranks[1]}' if ranks else ''}: {last}"
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {last}{where}"


# --------------------------------------------------------------------------------- console
class Console:
    """The console of one command (see the module docstring). A context manager; one at a
    time per process."""

    def __init__(self, command: str, log_dir: str, verbose: bool = False,
                 stream: TextIO | None = None) -> None:
        self.command, self.verbose = command, verbose
        self.stream = stream if stream is not None else sys.stderr
        self.log = LogFile(log_dir, command)
        self._restore: list[Callable[[], None]] = []
        self._file_handler = LogFileHandler(self.log)
        self._captured = False

    def __enter__(self) -> Console:
        global _active
        if _active is not None:
            raise RuntimeError("a lavender console is active already")
        _active = self
        if not self.verbose:
            self._quiet_native_stderr()  # first: the project's handlers write to the terminal
            self._quiet_ray_data()  # before the loggers: importing Ray gives `ray` its handler
            self._quiet_loggers()
            self._quiet_warnings()
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        global _active
        if (isinstance(error, Exception) and not getattr(error, "for_people", False)
                and not self.verbose):
            # the traceback goes to the log; the command line prints `failure_line` and the log
            self.log.write("".join(traceback.format_exception(error)))
            with contextlib.suppress(AttributeError):  # an exception type with __slots__
                error.log_path = self.log.path  # type: ignore[attr-defined]
        _active = None
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()
        self.log.close()
        if self.log.written:
            print(f"logs:       {self.log.path}  (Ray, DeepSpeed and worker output; --verbose "
                  "shows it here)", flush=True)

    # ------------------------------------------------------------------ quiet mode pieces
    def _quiet_loggers(self) -> None:
        """Terminal handlers of every logger outside `lavender_ray` -> the log file; the
        project's records -> the console (and the log)."""
        root = logging.getLogger()
        if self._file_handler not in root.handlers:
            self._reroute(root)
            last_resort, logging.lastResort = logging.lastResort, self._file_handler

            def undo_last_resort() -> None:
                logging.lastResort = last_resort

            self._restore.append(undo_last_resort)
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and not in_package_logger(name):
                self._reroute(logger)
        package = logging.getLogger(PACKAGE)
        if not any(isinstance(h, ConsoleHandler) for h in package.handlers):
            handler, level = ConsoleHandler(self.stream), package.level
            package.addHandler(handler)
            package.setLevel(logging.INFO)

            def undo() -> None:
                package.removeHandler(handler)
                package.setLevel(level)

            self._restore.append(undo)

    def _reroute(self, logger: logging.Logger) -> None:
        loud = [h for h in logger.handlers if writes_to_terminal(h)]
        is_root = logger is logging.getLogger()
        if not loud and not is_root and logger.propagate:
            return  # its records reach the root's file handler
        for handler in loud:
            logger.removeHandler(handler)
        # a propagating logger's records reach the root's file handler
        add = (is_root or not logger.propagate) and self._file_handler not in logger.handlers
        if add:
            logger.addHandler(self._file_handler)

        def undo() -> None:
            if add:
                logger.removeHandler(self._file_handler)
            for handler in loud:
                logger.addHandler(handler)

        self._restore.append(undo)

    def _quiet_native_stderr(self) -> None:
        """What C and C++ code writes to fd 2 (Ray's core worker, the raylet) -> the log file,
        when the console owns the process's real stderr (`NativeStderr`)."""
        if self.stream is not sys.stderr or not NativeStderr.applies():
            return
        native = NativeStderr()
        self.stream = native.start()

        def undo() -> None:
            for line in native.stop().splitlines():
                self.log.write(line)

        self._restore.append(undo)

    def _quiet_warnings(self) -> None:
        shown = warnings.showwarning

        def show_warning(message, category, filename, lineno, file=None, line=None):
            if in_package(filename):
                tqdm.write(f"warning: {message}", file=self.stream)
            self.log.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show_warning

        def undo() -> None:
            warnings.showwarning = shown

        self._restore.append(undo)

    def _quiet_ray_data(self) -> None:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        before = ctx.enable_progress_bars, ctx.enable_operator_progress_bars
        ctx.enable_progress_bars = ctx.enable_operator_progress_bars = False

        def undo() -> None:
            ctx.enable_progress_bars, ctx.enable_operator_progress_bars = before

        self._restore.append(undo)

    def _capture_workers(self) -> None:
        """Replace Ray's printer of forwarded worker output (`ray_print_logs`) by a
        `WorkerOutput` into the log file; loggers made by `ray.init` are rerouted too."""
        self._quiet_loggers()
        if self._captured:
            return
        self._captured = True
        # the driver's dispatcher of forwarded worker output (Ray's private API, pinned ray)
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        name = "lavender_console"  # one left by an earlier console of this process goes
        replaced = [pair for pair in dispatcher.handlers if pair[0] == "ray_print_logs"]
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, WorkerOutput(self.log.write, self._show))
        # the raylet's messages are printed by the driver's error listener, not the dispatcher
        import ray._private.worker as ray_worker

        printer = ray_worker.print_to_stdstream

        def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
            if raylet_expected(data):
                for line in data["lines"]:
                    self.log.write(f"(raylet) {line}")
            else:
                printer(data, ignore_prefix)

        ray_worker.print_to_stdstream = print_to_stdstream
        try:
            import ray

            session = ray._private.worker._global_node.get_session_dir_path()
            self.log.write(f"Ray's own logs of this session: {session}/logs")
        except Exception:  # no local node (a client): nothing to name
            pass

        def undo() -> None:
            import ray

            # Ray still up (it stops when the process ends): its last words, e.g. its clean-up
            # of finished worker groups, are dropped rather than printed after the summary
            if ray.is_initialized():
                return
            dispatcher.remove_handler(name)
            for pair in replaced:
                dispatcher.add_handler(*pair)
            ray_worker.print_to_stdstream = printer

        self._restore.append(undo)

    def _show(self, text: str) -> None:
        tqdm.write(text, file=self.stream)



def progress(label: str, total: int | None = None, unit: str = "items",
             rate_unit: str | None = None, every_s: float = PLAIN_EVERY_S) -> Progress:
    """The command's progress display (`Progress`) on the console's stream: live when quiet on a
    terminal, plain lines otherwise; silent when no console is active."""
    if _active is None:
        return Progress(label, total, unit, rate_unit, stream=None)
    stream = _active.stream
    live = not _active.verbose and bool(getattr(stream, "isatty", lambda: False)())
    return Progress(label, total, unit, rate_unit, stream=stream, live=live, every_s=every_s)


@contextmanager
def polling(poll: Callable[[], None], every_s: float = 2.0) -> Iterator[None]:
    """Call `poll` every `every_s` seconds from a daemon thread while the block runs, and once
    more at its end, when a console is active (nothing polls otherwise). An error in `poll`
    stops the polling, never the block."""
    if _active is None:
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            try:
                poll()
            except Exception as err:  # progress is a nicety: the command goes on without it
                logging.getLogger(__name__).debug("progress polling stopped: %r", err)
                return

    thread = threading.Thread(target=run, name="lavender-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)
        try:
            poll()
        except Exception:
            pass


