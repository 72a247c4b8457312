"""Where a quiet console sends what is not the project's own: the command's log file (opened
when first written, uploaded when the folder is a URI), the logging handlers that write to it
or, for the project's records, to the console above any live progress bar, and what native code
writes to file descriptor 2 (`NativeStderr`)."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
import time
from typing import BinaryIO, TextIO

import pyarrow.fs as pafs
from tqdm import tqdm

from lavender_ray.storage import absolute, filesystem_and_path, is_uri

PACKAGE = "lavender_ray"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFile:
    """`<folder>/<command>-<time>.log`, opened when first written (thread-safe); a URI folder
    gets a local copy, uploaded by `close`."""

    def __init__(self, folder: str, command: str) -> None:
        self.name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        # a local folder absolute: the `logs:` line names a file found from any directory
        folder = absolute(folder)
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


class LogFileHandler(logging.Handler):
    def __init__(self, log: LogFile) -> None:
        super().__init__(logging.INFO)  # Ray Data's DEBUG records stay in its own ray-data.log
        self.log = log
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record))
        except Exception:
            self.handleError(record)


class ConsoleHandler(logging.Handler):
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


def writes_to_terminal(handler: logging.Handler) -> bool:
    """A handler printing to stdout/stderr (Ray's `PlainRayHandler`, DeepSpeed's and
    transformers' stream handlers), not a file or an in-memory capture."""
    return (isinstance(handler, logging.StreamHandler)
            and not isinstance(handler, logging.FileHandler | ConsoleHandler)
            and not isinstance(getattr(handler, "stream", None), io.StringIO))


def in_package(filename: str) -> bool:
    return f"{os.sep}{PACKAGE}{os.sep}" in filename


def in_package_logger(name: str) -> bool:
    return name == PACKAGE or name.startswith(f"{PACKAGE}.")


class LogStream(io.TextIOBase):
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


class NativeStderr:
    """File descriptor 2 taken from C and C++ code (Ray's core worker in this process, the
    raylet and other processes it starts), which writes past Python's `sys.stderr`: while
    active, fd 2 points at an unnamed temporary file, and `sys.stderr` at a duplicate of the
    original fd 2, so Python's own writes (the console, tracebacks) still reach the terminal.
    `stop` puts fd 2 back and returns what native code wrote meanwhile.

    Only for a process whose `sys.stderr` is the real one on fd 2 (`applies`): under a test's
    capture or an embedding application nothing is moved."""

    def __init__(self) -> None:
        self._spool: BinaryIO | None = None
        self._saved: TextIO | None = None  # sys.stderr before `start`
        self._terminal: TextIO | None = None  # sys.stderr while active

    @staticmethod
    def applies() -> bool:
        try:
            return sys.stderr is sys.__stderr__ and sys.stderr.fileno() == 2
        except (AttributeError, ValueError, io.UnsupportedOperation):
            return False

    def start(self) -> TextIO:
        """Move fd 2; returns the new `sys.stderr` (the terminal)."""
        sys.stderr.flush()
        self._saved = sys.stderr
        terminal = os.dup(2)
        self._spool = tempfile.TemporaryFile()
        os.dup2(self._spool.fileno(), 2)
        self._terminal = io.TextIOWrapper(os.fdopen(terminal, "wb"),
                                          encoding=self._saved.encoding,
                                          errors=self._saved.errors, line_buffering=True)
        sys.stderr = self._terminal
        return self._terminal

    def stop(self) -> str:
        """Put fd 2 back on the terminal; the text native code wrote while active."""
        if self._spool is None:  # not started
            return ""
        self._terminal.flush()
        os.dup2(self._terminal.fileno(), 2)
        if sys.stderr is self._terminal:
            sys.stderr = self._saved
        self._terminal.close()  # the duplicate
        self._saved = self._terminal = None
        spool, self._spool = self._spool, None
        spool.seek(0)
        text = spool.read().decode("utf-8", errors="replace")
        spool.close()  # processes started meanwhile keep writing to the (unnamed) file
        return text
