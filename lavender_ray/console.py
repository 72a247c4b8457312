"""The console of a `lavender` command: the project's own output on the terminal, Ray's and
DeepSpeed's in a log file; `--verbose` shows everything as before.

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
import io
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import pyarrow.fs as pafs
from tqdm import tqdm

from lavender_ray.storage import filesystem_and_path, is_uri

PACKAGE = "lavender_ray"
WORKER_MARK = "<<lavender_ray>> "  # starts a worker's marked warning line (one JSON object)
SETUP_HOOK = "lavender_ray.console.mark_worker_warnings"
PLAIN_EVERY_S = 30.0  # plain progress lines at most this often (the last one always)
DEFAULT_COLUMNS = 100  # a live bar's width on a terminal that does not say its size
MIN_RATE_S = 1.0  # a rate is measured over at least this long (rows of one batch come at once)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
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


# ------------------------------------------------------------------------------- log file
class LogFile:
    """`<folder>/<command>-<time>.log`, opened when first written (thread-safe); a URI folder
    gets a local copy, uploaded by `close`."""

    def __init__(self, folder: str, command: str) -> None:
        self.name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        self.path = f"{folder.rstrip('/')}/{self.name}"
        self._local = self.path  # a URI folder: a temporary folder once written to
        self._file: TextIO | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def written(self) -> bool:
        return self._file is not None

    def write(self, text: str) -> None:
        with self._lock:
            if self._closed:  # a straggler after the command: nowhere to go
                return
            if self._file is None:
                if is_uri(self.path):
                    self._local = os.path.join(tempfile.mkdtemp(prefix="lavender-log-"), self.name)
                os.makedirs(os.path.dirname(self._local) or ".", exist_ok=True)
                self._file = open(self._local, "a", encoding="utf-8")
            self._file.write(text if text.endswith("\n") else text + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is None:
                return
            self._file.close()
            if self._local != self.path:
                fs, inner = filesystem_and_path(self.path)
                fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(self._local, inner, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=fs)


class _LogFileHandler(logging.Handler):
    def __init__(self, log: LogFile) -> None:
        super().__init__(logging.INFO)  # Ray Data's DEBUG records stay in its own ray-data.log
        self.log = log
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record))
        except Exception:
            self.handleError(record)


class _ConsoleHandler(logging.Handler):
    """The project's log records on the console, above any live progress bar."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            tqdm.write(message, file=self.stream)
        except Exception:
            self.handleError(record)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    """A handler printing to stdout/stderr (Ray's `PlainRayHandler`, DeepSpeed's and
    transformers' stream handlers), not a file or an in-memory capture."""
    return (isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler | _ConsoleHandler)
            and not isinstance(getattr(handler, "stream", None), io.StringIO))


def _in_package(filename: str) -> bool:
    return f"{os.sep}{PACKAGE}{os.sep}" in filename


def _in_package_logger(name: str) -> bool:
    return name == PACKAGE or name.startswith(f"{PACKAGE}.")


class _LogStream(io.TextIOBase):
    """A text stream whose lines go to a `LogFile`."""

    def __init__(self, log: LogFile) -> None:
        self.log, self.partial = log, ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.log.write(line)
        return len(text)

    def flush(self) -> None:
        if self.partial:
            self.log.write(self.partial)
            self.partial = ""


@contextmanager
def stdout_to_log() -> Iterator[None]:
    """With a quiet console, what is printed to stdout while the block runs goes to the log
    file: Ray Tune's experiment banner (which `verbose=0` leaves) and the warnings Ray's
    driver prints for the raylet. For blocks where the project prints nothing to stdout."""
    if not quiet():
        yield
        return
    stream = _LogStream(_active.log)
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        stream.flush()


# --------------------------------------------------------------------------------- workers
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
        if _in_package(filename):
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
        self._file_handler = _LogFileHandler(self.log)
        self._captured = False

    def __enter__(self) -> Console:
        global _active
        if _active is not None:
            raise RuntimeError("a lavender console is active already")
        _active = self
        if not self.verbose:
            self._quiet_ray_data()  # first: importing Ray gives the `ray` logger its handler
            self._quiet_loggers()
            self._quiet_warnings()
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
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
            if isinstance(logger, logging.Logger) and not _in_package_logger(name):
                self._reroute(logger)
        package = logging.getLogger(PACKAGE)
        if not any(isinstance(h, _ConsoleHandler) for h in package.handlers):
            handler, level = _ConsoleHandler(self.stream), package.level
            package.addHandler(handler)
            package.setLevel(logging.INFO)

            def undo() -> None:
                package.removeHandler(handler)
                package.setLevel(level)

            self._restore.append(undo)

    def _reroute(self, logger: logging.Logger) -> None:
        loud = [h for h in logger.handlers if _writes_to_terminal(h)]
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

    def _quiet_warnings(self) -> None:
        shown = warnings.showwarning

        def show_warning(message, category, filename, lineno, file=None, line=None):
            if _in_package(filename):
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

        self._restore.append(undo)

    def _show(self, text: str) -> None:
        tqdm.write(text, file=self.stream)


# -------------------------------------------------------------------------------- progress
def format_duration(seconds: float | None) -> str:
    """`h:mm:ss` (`?` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def eta_seconds(done: float, total: float | None, rate: float | None) -> float | None:
    """Seconds left for `total - done` units at `rate` units per second (None: unknown)."""
    if total is None or not rate or rate <= 0 or not math.isfinite(rate):
        return None
    return max(total - done, 0) / rate


class Progress:
    """One progress display: a live tqdm bar (`live=True`) or plain lines to `stream`, at most
    one per `every_s` seconds and always the last (`stream=None`: silent).

    `set(n)` moves it to `n` units of `total` (None: unknown). Without an `eta_s`, the rate is
    measured between the first update with progress and the latest one, once `MIN_RATE_S`
    apart (start-up time left out), and shown as `<rate> <rate_unit>/s` with the ETA it gives;
    `fields` are shown as given (e.g. `loss 6.41`)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "items",
                 rate_unit: str | None = None, stream: TextIO | None = None, live: bool = False,
                 every_s: float = PLAIN_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.rate_unit = rate_unit or unit
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self.start = clock()
        self.n: float = 0
        self.first: tuple[float, float] | None = None  # (time, n) of the first progress
        self.text = ""
        self.printed_n: float = 0  # the n of the last plain line
        self.last_print = -math.inf
        self.bar = None
        if stream is not None and live:
            sized = _columns(stream) > 0  # a terminal without a size: tqdm would draw nothing
            self.bar = tqdm(total=total, desc=label, unit=unit, file=stream, dynamic_ncols=sized,
                            ncols=None if sized else DEFAULT_COLUMNS,
                            nrows=None if sized else 24,
                            bar_format=("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                        "{unit} [{elapsed}{postfix}]") if total else
                            "{desc}: {n_fmt} {unit} [{elapsed}{postfix}]")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rate(self, now: float) -> float | None:
        if self.first is None or now - self.first[0] < MIN_RATE_S or self.n <= self.first[1]:
            return None
        return (self.n - self.first[1]) / (now - self.first[0])

    def set(self, n: float, eta_s: float | None = None, fields: Sequence[str] = ()) -> None:
        now = self.clock()
        self.n = n
        if self.first is None and n > 0:
            self.first = (now, n)
        parts = list(fields)
        if eta_s is None:
            rate = self.rate(now)
            if rate is not None:
                parts.append(f"{rate:.3g} {self.rate_unit}/s")
            eta_s = eta_seconds(n, self.total, rate)
        if self.total is not None and n < self.total:
            parts.append(f"ETA {format_duration(eta_s)}")
        self.text = "  ".join(parts)
        if self.bar is not None:
            self.bar.n = n
            self.bar.set_postfix_str(self.text, refresh=False)
            self.bar.refresh()
        elif n > self.printed_n and (now - self.last_print >= self.every_s
                                     or (self.total is not None and n >= self.total)):
            self._print_line(now)

    def line(self, now: float | None = None) -> str:
        """The plain line for the current state."""
        now = self.clock() if now is None else now
        count = f"{self.n:g}/{self.total} {self.unit}" if self.total is not None \
            else f"{self.n:g} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        text = f"  {self.text}" if self.text else ""
        return f"{self.label}: {count}{text}  [{format_duration(now - self.start)}]"

    def _print_line(self, now: float) -> None:
        if self.stream is None:
            return
        print(self.line(now), file=self.stream, flush=True)
        self.printed_n, self.last_print = self.n, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.n > self.printed_n:
            self._print_line(self.clock())


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


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


# ------------------------------------------------------------------------------ JSONL tail
class JsonlTail:
    """The complete lines appended to a JSON-lines file (local path or URI) since the last
    `read_new`, parsed; a last line without its newline yet waits for the next call. A file
    that does not exist yet reads as empty; one that became shorter is read from the start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        fs, inner = filesystem_and_path(self.path)
        info = fs.get_file_info(inner)
        if info.type != pafs.FileType.File:
            return []
        if info.size < self.offset:  # rewritten shorter (a resumed run): read it again
            self.offset = 0
        if info.size == self.offset:
            return []
        with fs.open_input_file(inner) as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # complete lines only
        self.offset += end
        return self.parse(data[:end])

    @staticmethod
    def parse(data: bytes) -> list[dict[str, Any]]:
        """The JSON objects of complete lines; a corrupt line is skipped."""
        records = []
        for line in data.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
        return records
