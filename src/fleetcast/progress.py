"""Progress reporting: a callback type for library code and a terminal bar (bytes, rate, ETA) for the CLI."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

# Library code reports progress as (bytes_done, bytes_total); it never prints.
ProgressFn = Callable[[int, int], None]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02}:{s:02}" if h else f"{m}:{s:02}"


@dataclass
class Rate:
    """Smoothed transfer rate and ETA from (done, total) samples."""

    started: float
    done: int = 0
    total: int = 0

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    @property
    def bytes_per_second(self) -> float:
        return self.done / self.elapsed

    @property
    def eta_seconds(self) -> float | None:
        rate = self.bytes_per_second
        if rate <= 0 or self.total <= 0:
            return None
        return max(self.total - self.done, 0) / rate


class ProgressBar:
    """A one-line bar on a terminal; silent when the stream is not a TTY or ``enabled`` is False."""

    def __init__(self, label: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.label = label
        self.rate = Rate(started=time.monotonic())
        self._last_draw = 0.0

    def __call__(self, done: int, total: int) -> None:
        self.rate.update(done, total)
        now = time.monotonic()
        if self.enabled and (now - self._last_draw >= 0.2 or done >= total):
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        r = self.rate
        frac = r.done / r.total if r.total else 0.0
        width = 24
        filled = int(frac * width)
        eta = r.eta_seconds
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% "
            f"{human_bytes(r.done)}/{human_bytes(r.total)} {human_bytes(r.bytes_per_second)}/s "
            f"ETA {human_duration(eta) if eta is not None else '--:--'}"
        )
        self.stream.write(line.ljust(100))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
