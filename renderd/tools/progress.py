"""Progress for long tools: a live bar on a terminal, plain lines otherwise.

On a terminal the bar is redrawn in place at most ``refresh`` times a
second: done/total, percentage, rate and ETA. Anywhere else (a log file,
systemd's journal, a CI log) a plain line is printed every ``interval``
seconds, so logs stay readable and small. Nothing but the standard library.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Callable, TextIO


def fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds < 0:  # NaN or negative: unknown
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class Progress:
    """Counts units of work (metatiles) against a known total."""

    def __init__(self, total: int, label: str = "metatiles", stream: TextIO | None = None,
                 tty: bool | None = None, interval: float | None = None, refresh: float = 0.2,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.total = max(0, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        if interval is None:
            interval = float(os.environ.get("RENDERD_PY_PROGRESS_INTERVAL", "10"))
        self.interval = interval
        self.refresh = refresh
        self.enabled = enabled
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.extra = ""
        self._last = float("-inf")
        self._drawn = False

    # --- counting ----------------------------------------------------------
    def advance(self, n: int = 1, extra: str | None = None) -> None:
        self.done += n
        if extra is not None:
            self.extra = extra
        self.maybe_draw()

    def maybe_draw(self) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now - self._last >= (self.refresh if self.tty else self.interval):
            self._last = now
            self.draw()

    @property
    def elapsed(self) -> float:
        return max(self.clock() - self.start, 1e-9)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed

    def eta(self) -> float:
        r = self.rate
        return (self.total - self.done) / r if r > 0 else float("nan")

    def text(self, extra: bool = True) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.done}/{self.total} {self.label}", f"{pct:5.1f}%",
                 f"{self.rate:.1f}/s", f"ETA {fmt_duration(self.eta())}"]
        if self.extra and extra:
            parts.append(self.extra)
        return "  ".join(parts)

    def draw(self) -> None:
        if not self.enabled:
            return
        text = self.text()
        if self.tty:
            width = shutil.get_terminal_size((80, 20)).columns
            if len(text) + 14 > width:  # a narrow terminal: the counts, not the details
                text = self.text(extra=False)
            barw = max(10, min(40, width - len(text) - 4))
            frac = self.done / self.total if self.total else 1.0
            fill = int(barw * min(1.0, frac))
            line = f"[{'#' * fill}{'.' * (barw - fill)}] {text}"
            self.stream.write("\r" + line[: width - 1] + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(f"progress: {text}\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A one-off line that does not break the bar."""
        if not self.enabled:
            return
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(message + "\n")
        self.stream.flush()
        if self.tty:
            self.draw()

    def finish(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
        elif self.done and self.clock() - self._last > 0:
            self.draw()
