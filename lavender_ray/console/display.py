"""A command's progress display: a live tqdm bar on a terminal, plain lines (at most one every
`PLAIN_EVERY_S` seconds, always the last) otherwise, with the rate and ETA it measures."""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from tqdm import tqdm

PLAIN_EVERY_S = 30.0  # plain progress lines at most this often (the last one always)
DEFAULT_COLUMNS = 100  # a live bar's width on a terminal that does not say its size
MIN_RATE_S = 1.0  # a rate is measured over at least this long (rows of one batch come at once)


def format_duration(seconds: float | None) -> str:
    """`h:mm:ss` (`?` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_rate(per_second: float, unit: str) -> str:
    """`<rate> <unit>/s`, or per minute below one a second (Tune trials, big models' samples):
    "1.2 trials/min" reads where "0.02 trials/s" does not."""
    if per_second < 1:
        return f"{per_second * 60:.3g} {unit}/min"
    return f"{per_second:.3g} {unit}/s"


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
    apart (start-up time left out), and shown per second or per minute (`format_rate`) with the
    ETA it gives; `fields` are shown as given (e.g. `loss 6.41`)."""

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
                parts.append(format_rate(rate, self.rate_unit))
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
