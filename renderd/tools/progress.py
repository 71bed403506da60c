"""Progress for long tools: a live bar on a terminal, plain lines otherwise.

On a terminal a tqdm bar is redrawn in place at most ``refresh`` times a
second: done/total, percentage, rate and ETA, then what the tool adds.
Anywhere else (a log file, systemd's journal, a CI log) a plain line is
printed every ``interval`` seconds, so logs stay readable and small.

The figures are this module's, from its own (injectable) clock, and so are
the plain lines; tqdm draws the bar, in place, and clears it for a note.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm


def fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds < 0:  # NaN or negative: unknown
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def columns(stream: TextIO) -> int:
    """The terminal's width: ``$COLUMNS``, else that of the terminal
    ``stream`` writes to, else standard output's, else 80."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size((80, 20)).columns


class _Bar(tqdm):
    """tqdm drawing only: ``Progress`` says when, so no monitor thread."""

    monitor_interval = 0


class Progress:
    """Counts units of work (metatiles) against a known total.

    ``prefix`` goes before the figures (``stage 2 (transform.optimize): ``)
    and ``position`` is the line of the bar on a terminal, so that several
    (one per pipeline stage) are drawn at once, one under the other."""

    def __init__(self, total: int, label: str = "metatiles", stream: TextIO | None = None,
                 tty: bool | None = None, interval: float | None = None, refresh: float = 0.2,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic,
                 prefix: str = "", position: int = 0):
        self.total = max(0, total)
        self.label = label
        self.prefix = prefix
        self.position = position
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
        self._bar: _Bar | None = None

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
        parts = [f"{self.prefix}{self.done}/{self.total} {self.label}", f"{pct:5.1f}%",
                 f"{self.rate:.1f}/s", f"ETA {fmt_duration(self.eta())}"]
        if self.extra and extra:
            parts.append(self.extra)
        return "  ".join(parts)

    def draw(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            if not self._sync_bar():
                self._bar.refresh()
        else:
            self.stream.write(f"progress: {self.text()}\n")
        self.stream.flush()

    def _sync_bar(self) -> bool:
        """Give the bar the current figures; True if it was made (and drawn) now."""
        width = columns(self.stream)
        text = self.text()
        if len(text) + 14 > width:  # a narrow terminal: the counts, not the details
            text = self.text(extra=False)
        barw = max(10, min(40, width - len(text) - 4))
        total, done = (self.total, min(self.done, self.total)) if self.total else (1, 1)
        fmt = f"[{{bar:{barw}}}] {{desc}}"
        if self._bar is None:
            # one bar on the line the cursor is on: its height is not asked
            # for (a terminal of unknown size would hide the bar)
            self._bar = _Bar(total=total, initial=done, desc=text, bar_format=fmt, ncols=width - 1,
                             nrows=20, ascii=".#", file=self.stream, position=self.position,
                             leave=True)
            return True
        bar = self._bar
        bar.total, bar.n, bar.desc, bar.bar_format, bar.ncols = total, done, text, fmt, width - 1
        return False

    def note(self, message: str) -> None:
        """A one-off line that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.clear()
        self.stream.write(message + "\n")
        self.stream.flush()
        if self.tty:
            self.draw()

    def finish(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self._sync_bar()
            self._bar.close()  # drawn a last time, then the line is ended
            self._bar = None
            self.stream.flush()
        elif self.done and self.clock() - self._last > 0:
            self.draw()
