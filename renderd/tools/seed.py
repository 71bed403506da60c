"""Seeding: ask the daemon for every metatile of an area over a zoom range.

The plan is walked zoom by zoom, row by row. Each metatile is first looked
up in the store (one index read, no daemon): with ``--missing`` (default) a
stored, fresh metatile is skipped, so a seed stopped by Ctrl-C continues
where it was when run again. What is left goes to the broker at the bulk
priority with the ``nodata`` flag (the reply carries no tile bytes) through
a ``Window`` (``renderd.client``, shared with ``export --render-missing``
and ``expire --mode render``): at most ``concurrency`` requests in flight,
``BUSY`` answers retried after a back-off, a request unanswered past its
deadline failed. The broker keeps part of its pool for interactive
requests, so a seed never starves users.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from .. import protocol as p
from ..client import Client, Endpoint, Never, StopFlag, Window, connect
from ..errors import UsageError
from ..store.base import Store
from ..store.index import MetaIndex
from ..tilemath import Meta
from .area import Area
from .progress import Progress

MODES = ("missing", "force", "older")


# --- seeding -------------------------------------------------------------

def parse_older_than(text: str) -> int:
    """ISO 8601 date or date-time into unix seconds; naive times are UTC."""
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise UsageError(f"--older-than {text!r} is not an ISO 8601 date or date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def parse_threshold(text: str) -> tuple[int | None, float | None]:
    """``"10"`` (failed metatiles) or ``"2%"`` (of those sent) into (count, fraction)."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            frac = float(t[:-1]) / 100.0
            if not 0.0 <= frac <= 1.0:
                raise ValueError
            return None, frac
        count = int(t)
        if count < 0:
            raise ValueError
        return count, None
    except ValueError:
        raise UsageError(f"--max-failures {text!r} is not a count such as 10 or a share such as 1%") from None


@dataclass
class SeedOptions:
    mode: str = "missing"
    older_than: int | None = None
    concurrency: int = 8
    timeout: float = 600.0
    max_failures: str = "0"
    grace: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown seed mode {self.mode!r}")
        if self.mode == "older" and self.older_than is None:
            raise UsageError("--older-than needs a date")
        if self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if self.timeout <= 0:
            raise UsageError("--timeout must be positive")
        parse_threshold(self.max_failures)


@dataclass
class SeedSummary:
    layer: str
    zooms: tuple[int, int]
    metatiles: int = 0
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    not_done: int = 0
    tiles_rendered: int = 0
    tiles_skipped: int = 0
    tiles_failed: int = 0
    unique_tiles: int = 0
    bytes: int = 0
    seconds: float = 0.0
    busy_answers: int = 0
    interrupted: bool = False
    gone: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0

    @property
    def remaining(self) -> int:
        """Metatiles neither rendered, skipped nor failed (a stopped seed)."""
        return max(0, self.metatiles - self.rendered - self.skipped - self.failed)

    def over_threshold(self, max_failures: str) -> bool:
        count, frac = parse_threshold(max_failures)
        if count is not None:
            return self.failed > count
        attempted = self.rendered + self.failed
        return attempted > 0 and self.failed / attempted > (frac or 0.0)

    def lines(self) -> list[str]:
        state = "interrupted" if self.interrupted else "stopped" if self.gone else "done"
        out = [
            f"seed {state}: layer {self.layer}, zooms {self.zooms[0]}-{self.zooms[1]}, "
            f"{self.metatiles} metatiles planned",
            f"  metatiles: {self.rendered} rendered, {self.skipped} skipped, {self.failed} failed"
            + (f", {self.remaining} left for the next run" if self.remaining else ""),
            f"  tiles:     {self.tiles_rendered} rendered, {self.tiles_skipped} skipped, "
            f"{self.tiles_failed} failed",
            f"  written:   {self.unique_tiles} unique tiles, {self.bytes} bytes",
            f"  time:      {self.seconds:.1f} s, {self.rate:.2f} metatiles/s",
        ]
        if self.busy_answers:
            out.append(f"  broker busy {self.busy_answers} times (requests retried)")
        if self.gone:
            out.append(f"  stopped: {self.gone}")
        for meta, reason in self.failures:
            out.append(f"  failed {meta}: {reason}")
        return out

    def as_dict(self) -> dict:
        return {
            "layer": self.layer, "zooms": list(self.zooms), "metatiles": self.metatiles,
            "rendered": self.rendered, "skipped": self.skipped, "failed": self.failed,
            "remaining": self.remaining, "tiles_rendered": self.tiles_rendered,
            "tiles_skipped": self.tiles_skipped, "tiles_failed": self.tiles_failed,
            "unique_tiles": self.unique_tiles, "bytes": self.bytes,
            "seconds": round(self.seconds, 3), "rate": round(self.rate, 3),
            "busy_answers": self.busy_answers, "interrupted": self.interrupted, "daemon_gone": self.gone,
        }


def needs_render(idx: MetaIndex | None, opts: SeedOptions) -> tuple[bool, frozenset[str]]:
    """Whether a metatile with this stored index is to be rendered, and extra flags."""
    if opts.mode == "force":
        return True, frozenset({"force"})
    if idx is None:
        return True, frozenset()
    if idx.stale:
        return True, frozenset({"force"})
    if opts.mode == "older" and idx.rendered < (opts.older_than or 0):
        return True, frozenset({"force"})
    return False, frozenset()


def plan(area: Area, zooms: tuple[int, int], meta: int) -> Iterator[Meta]:
    for z in range(zooms[0], zooms[1] + 1):
        yield from area.metatiles(z, meta)


@dataclass(frozen=True)
class SeedEvent:
    """What became of one metatile: ``rendered``, ``skipped`` (stored and
    fresh; ``index`` is the stored index) or ``failed`` (``reason``)."""

    layer: str
    meta: Meta
    outcome: str
    index: MetaIndex | None = None
    reason: str | None = None


class Seeder:
    """Metatiles offered one at a time, of any tile set, each looked up in
    the store and skipped when stored and fresh (``needs_render``), else sent
    to the broker at the bulk priority through one ``Window`` (opened at the
    first metatile to render). The counts go into ``summary``;
    ``on_event(SeedEvent)`` is told of each metatile as it is done, and
    ``changed(layer, meta)`` of each stored one rendered again. ``seed`` runs
    one over an area's plan; the pipeline's ``transform.pyramid`` offers
    metatiles as their datasets arrive."""

    def __init__(self, store: Store, endpoint: Endpoint, opts: SeedOptions, summary: SeedSummary,
                 progress: Progress | None = None, stop: StopFlag | None = None,
                 changed: Callable[[str, Meta], None] | None = None,
                 on_event: Callable[[SeedEvent], None] | None = None):
        self.store, self.endpoint, self.opts, self.s = store, endpoint, opts, summary
        self.progress = progress
        self.stop = stop or Never()
        self.changed = changed
        self.on_event = on_event
        self.seen: set[str] = set()
        self.replacing: set[tuple[str, Meta]] = set()   # stored metatiles being rendered again
        self.client: Client | None = None
        self.window: Window | None = None

    def _extra(self) -> str:
        s = self.s
        return f"rendered {s.rendered} skipped {s.skipped} failed {s.failed}"

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(1, self._extra())

    def _ok(self, key: tuple[str, Meta], reply: p.Reply) -> None:
        layer, m = key
        s = self.s
        s.rendered += 1
        if key in self.replacing:
            self.replacing.discard(key)
            if self.changed is not None:
                self.changed(layer, m)
        s.tiles_rendered += m.n * m.n
        got = self.store.metatile_sizes(layer, m)
        if got is not None:
            idx, sizes = got
            for h in idx.unique():
                if h not in self.seen:
                    self.seen.add(h)
                    s.bytes += sizes.get(h, 0)
            s.unique_tiles = len(self.seen)
        self._advance()
        if self.on_event is not None:
            self.on_event(SeedEvent(layer, m, "rendered"))

    def _fail(self, key: tuple[str, Meta], reason: str) -> None:
        layer, m = key
        s = self.s
        self.replacing.discard(key)
        s.failed += 1
        s.tiles_failed += m.n * m.n
        if len(s.failures) < 10:
            s.failures.append((str(m) if layer == s.layer else f"{layer} {m}", reason))
        self._advance()
        if self.on_event is not None:
            self.on_event(SeedEvent(layer, m, "failed", reason=reason))

    def offer(self, layer: str, m: Meta) -> bool:
        """Skip or send one metatile; False if stopped (or the daemon went)
        before it could be sent."""
        if self.stop.is_set():
            return False
        idx = self.store.get_index(layer, m)
        render, flags = needs_render(idx, self.opts)
        if not render:
            self.s.skipped += 1
            self.s.tiles_skipped += m.n * m.n
            self._advance()
            if self.on_event is not None:
                self.on_event(SeedEvent(layer, m, "skipped", idx))
            if self.window is not None and self.window.in_flight:
                self.window.poll(0)
            return True
        if self.window is None:
            self.client = connect(self.endpoint)
            self.window = Window(self.client, layer, p.BULK, self.opts.concurrency, self.opts.timeout,
                                 self._ok, self._fail, flags=("nodata",), stop=self.stop,
                                 tick=self.progress.maybe_draw if self.progress is not None else None)
        if idx is not None:
            self.replacing.add((layer, m))
        return self.window.submit(m, flags, layer=layer, tag=(layer, m))

    def poll(self, wait: float = 0.0) -> None:
        """Handle the answers that came (waiting up to ``wait`` seconds)."""
        if self.window is not None and self.window.in_flight:
            self.window.poll(wait)
        elif wait > 0:
            time.sleep(wait)

    @property
    def in_flight(self) -> int:
        return 0 if self.window is None else self.window.outstanding()

    @property
    def gone(self) -> str | None:
        return None if self.window is None else self.window.gone

    def finish(self) -> None:
        """Wait for every answer (once stopped, for ``grace`` seconds more);
        what was not answered is left for the next run."""
        if self.window is None:
            return

        def waiting(n: int) -> None:
            if self.progress is not None:
                self.progress.note(f"stopping: waiting up to {self.opts.grace:g}s for {n} "
                                   "renders in flight (Ctrl-C again to quit now)")

        self.s.not_done += len(self.window.finish(self.opts.grace, waiting))
        self.s.busy_answers = self.window.busy_answers
        self.s.gone = self.window.gone

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def seed(store: Store, endpoint: Endpoint, layer: str, area: Area,
         zooms: tuple[int, int], opts: SeedOptions, meta: int = 8,
         progress: Progress | None = None, stop: StopFlag | None = None,
         total: int | None = None, changed: Callable[[Meta], None] | None = None) -> SeedSummary:
    """Seed ``area`` over ``zooms``; returns the summary (also when stopped).
    ``changed(meta)`` is called for each metatile that was stored and has
    been rendered again (for nginx's hot cache, see ``tools.purge``)."""
    stop = stop or Never()
    started = time.monotonic()
    s = SeedSummary(layer, zooms)
    s.metatiles = area.count_metatiles(zooms, meta) if total is None else total
    if progress is not None:
        progress.total = s.metatiles
    seeder = Seeder(store, endpoint, opts, s, progress, stop,
                    None if changed is None else (lambda _layer, m: changed(m)))
    try:
        for m in plan(area, zooms, meta):
            if not seeder.offer(layer, m):
                break
        seeder.finish()
    finally:
        s.interrupted = stop.is_set()
        s.seconds = time.monotonic() - started
        seeder.close()
        if progress is not None:
            progress.finish()
    return s
