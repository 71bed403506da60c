"""Progress output: a bar redrawn in place on a terminal, plain lines elsewhere."""

import io

from renderd.tools.progress import Progress, fmt_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_plain_lines_every_interval():
    out, clock = io.StringIO(), Clock()
    pr = Progress(100, "metatiles", stream=out, tty=False, interval=10, clock=clock)
    for i in range(100):
        clock.t += 0.5
        pr.advance(1, f"rendered {i + 1}")
    pr.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    # at 0.5 s (the first advance), 10.5, 20.5, 30.5, 40.5, then the final line at 50 s
    assert [ln.split()[1] for ln in lines] == ["1/100", "21/100", "41/100", "61/100", "81/100", "100/100"]
    assert lines[0].startswith("progress: 1/100 metatiles")
    assert lines[-1] == "progress: 100/100 metatiles  100.0%  2.0/s  ETA 0:00  rendered 100"


def test_bar_on_a_terminal():
    out, clock = io.StringIO(), Clock()
    pr = Progress(40, "metatiles", stream=out, tty=True, refresh=0.2, clock=clock)
    for _ in range(10):
        clock.t += 1.0
        pr.advance()
    pr.note("stopping")
    pr.finish()
    text = out.getvalue()
    assert text.count("\r") >= 10 and "\n" in text
    last = text.rsplit("\r", 1)[-1]
    assert "10/40 metatiles" in last and "25.0%" in last and "1.0/s" in last and "ETA 0:30" in last
    bar = last[last.index("[") + 1:last.index("]")]
    assert set(bar) == {"#", "."} and bar.count("#") == int(len(bar) * 0.25)
    assert "stopping\n" in text


def test_disabled_and_durations():
    out = io.StringIO()
    pr = Progress(5, stream=out, tty=True, enabled=False)
    pr.advance(5)
    pr.note("x")
    pr.finish()
    assert out.getvalue() == ""
    assert fmt_duration(59.6) == "1:00" and fmt_duration(3725) == "1:02:05"
    assert fmt_duration(float("nan")) == "?"


def test_bar_on_a_real_pseudo_terminal(monkeypatch):
    """Standard error on a fresh pty, which reports 0 columns and 0 rows (a
    terminal of unknown size): the bar is still drawn, 80 columns wide, and
    ends its line."""
    import os
    import pty
    import sys
    monkeypatch.delenv("COLUMNS", raising=False)
    master, slave = pty.openpty()
    clock = Clock()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        pr = Progress(8, "metatiles", clock=clock)
        assert pr.tty
        for _ in range(8):
            clock.t += 1.0
            pr.advance()
        pr.finish()
        got = b""
        while not got.endswith(b"\n"):
            got += os.read(master, 4096)
    os.close(master)
    last = got.decode().rstrip("\r\n").rsplit("\r", 1)[-1]
    bar, text = last[1:].split("] ", 1)
    assert set(bar) == {"#"} and len(bar) >= 10
    assert text.rstrip() == "8/8 metatiles  100.0%  1.0/s  ETA 0:00"
    assert len(last.rstrip()) < 80
