"""Seeding: ask the daemon for every metatile of an area over a zoom range.

The plan is walked zoom by zoom, row by row. Each metatile is first looked
up in the store (one index read, no daemon): with ``--missing`` (default) a
stored, fresh metatile is skipped, so a seed stopped by Ctrl-C continues
where it was when run again. What is left goes to the broker at the bulk
priority with the ``nodata`` flag (the reply carries no tile bytes) through
a ``Window``: at most ``concurrency`` requests in flight, ``BUSY`` answers
retried after a back-off, a request unanswered past its deadline failed.
The broker keeps part of its pool for interactive requests, so a seed
never starves users.

``Window`` is shared with ``export --render-missing`` and
``expire --mode render``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Protocol

from .. import protocol as p
from ..client import Client
from ..errors import DaemonError, UsageError
from ..store.base import Store
from ..store.index import MetaIndex
from ..tilemath import Meta, Tile
from .area import Area
from .progress import Progress

MODES = ("missing", "force", "older")
#: the broker's FAIL reason while it stops (renderd/broker.py)
SHUTTING_DOWN = b"shutting down"


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class _Never:
    def is_set(self) -> bool:
        return False


# --- the window of requests in flight ------------------------------------

@dataclass
class _Pending:
    meta: Meta
    flags: frozenset[str]
    deadline: float
    busy: int = 0


class Window:
    """Keeps up to ``size`` render requests in flight on one ``Client``.

    ``submit`` blocks while the window is full, handling replies as they
    come; ``drain`` waits for the rest. ``on_ok(meta, reply)`` and
    ``on_fail(meta, reason)`` are called once per metatile.
    """

    def __init__(self, client: Client, layer: str, priority: int, size: int,
                 timeout: float, on_ok: Callable[[Meta, p.Reply], None],
                 on_fail: Callable[[Meta, str], None], flags: Iterable[str] = ("nodata",),
                 stop: StopFlag | None = None, tick: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if size < 1:
            raise UsageError("concurrency must be at least 1")
        self.client = client
        self.layer = layer
        self.priority = priority
        self.size = size
        self.timeout = timeout
        self.flags = frozenset(flags)
        self.on_ok = on_ok
        self.on_fail = on_fail
        self.stop = stop or _Never()
        self.tick = tick
        self.clock = clock
        self.in_flight: dict[bytes, _Pending] = {}
        self.retry: deque[tuple[float, _Pending]] = deque()
        self.busy_answers = 0
        self.sent = 0
        #: with requests in flight and no answer for this long, PING the broker
        self.liveness = min(30.0, timeout)
        self._heard = clock()
        #: why the daemon cannot be used any more (shutting down, not answering)
        self.gone: str | None = None

    def __len__(self) -> int:
        return len(self.in_flight) + len(self.retry)

    def outstanding(self) -> int:
        """Requests still to be answered (BUSY retries count until the daemon is gone)."""
        return len(self.in_flight) + (0 if self.gone else len(self.retry))

    def _send(self, pend: _Pending) -> None:
        req = p.RenderRequest(self.client.next_id(), self.layer, Tile(pend.meta.z, pend.meta.x0, pend.meta.y0),
                              self.priority, int(self.timeout * 1000), pend.flags)
        pend.deadline = self.clock() + self.timeout + 5.0
        self.client.send(req)
        self.in_flight[req.rid] = pend
        self.sent += 1

    def submit(self, meta: Meta, extra_flags: Iterable[str] = ()) -> bool:
        """Queue ``meta``; False if stopped (or the daemon went) before it could be sent."""
        while len(self) >= self.size:
            if self.stop.is_set() or self.gone:
                return False
            self.poll(0.2)
        if self.stop.is_set() or self.gone:
            return False
        self._send(_Pending(meta, self.flags | frozenset(extra_flags), 0.0))
        return True

    def poll(self, wait: float) -> None:
        """Handle replies for up to ``wait`` seconds, resend BUSY ones, expire late ones."""
        now = self.clock()
        while self.retry and self.retry[0][0] <= now and not self.gone:
            _, pend = self.retry.popleft()
            self._send(pend)
        if self.retry:
            wait = min(wait, max(0.0, self.retry[0][0] - now))
        reply = self.client.recv(wait) if self.in_flight else (time.sleep(wait) if wait > 0 else None)
        while reply is not None:
            self._heard = self.clock()
            self._handle(reply)
            reply = self.client.recv(0)
        now = self.clock()
        if not self.in_flight:
            self._heard = now
        elif now - self._heard > self.liveness:
            self._check_broker()
        late = [rid for rid, pend in self.in_flight.items() if pend.deadline < now]
        for rid in late:
            pend = self.in_flight.pop(rid)
            self.on_fail(pend.meta, f"no answer in {self.timeout:g}s")
        if self.tick is not None:
            self.tick()

    def _check_broker(self) -> None:
        """Long silence: a PING on a socket of its own (this one's replies
        must not be consumed) tells a slow render from a daemon gone. When
        it is gone, what is in flight is given up (not failed)."""
        probe = Client(self.client.endpoint)
        try:
            alive = probe.ping(min(5.0, max(1.0, self.liveness)))
        finally:
            probe.close()
        self._heard = self.clock()
        if not alive:
            self.gone = f"the daemon at {self.client.endpoint} stopped answering"
            self.abandon()

    def _handle(self, reply: p.Reply) -> None:
        pend = self.in_flight.pop(reply.rid, None)
        if pend is None:
            return  # an answer to a request already given up on
        if reply.status == p.OK:
            self.on_ok(pend.meta, reply)
        elif reply.status == p.FAIL and reply.info == SHUTTING_DOWN:
            # not the metatile's fault: it is left for the next run
            self.gone = f"the daemon at {self.client.endpoint} is shutting down"
        elif reply.status == p.BUSY:
            self.busy_answers += 1
            pend.busy += 1
            backoff = min(5.0, 0.1 * (2 ** min(pend.busy, 6)))
            self.retry.append((self.clock() + backoff, pend))
        else:
            reason = reply.info.decode("utf-8", "replace") or reply.status.decode()
            self.on_fail(pend.meta, f"{reply.status.decode()}: {reason}")

    def drain(self, limit: float | None = None) -> bool:
        """Wait for every request; True if none is left (False after ``limit`` s)."""
        end = None if limit is None else self.clock() + limit
        while self.outstanding():
            if end is not None and self.clock() >= end:
                return False
            self.poll(0.2 if end is None else max(0.0, min(0.2, end - self.clock())))
        return True

    def abandon(self) -> list[Meta]:
        """Forget what is still pending (the broker may still render it)."""
        left = [pend.meta for pend in self.in_flight.values()] + [pend.meta for _, pend in self.retry]
        self.in_flight.clear()
        self.retry.clear()
        return left


def connect(endpoint: str, timeout: float = 5.0) -> Client:
    """A client of the broker, checked with a PING; ``DaemonError`` if none answers."""
    client = Client(endpoint)
    if not client.ping(timeout):
        client.close()
        raise DaemonError(f"no daemon answers at {endpoint} (is `renderd-py serve` running?)")
    return client


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


def seed(store: Store, endpoint: str | Callable[[], Client], layer: str, area: Area,
         zooms: tuple[int, int], opts: SeedOptions, meta: int = 8,
         progress: Progress | None = None, stop: StopFlag | None = None,
         total: int | None = None, changed: Callable[[Meta], None] | None = None) -> SeedSummary:
    """Seed ``area`` over ``zooms``; returns the summary (also when stopped).
    ``changed(meta)`` is called for each metatile that was stored and has
    been rendered again (for nginx's hot cache, see ``tools.purge``)."""
    stop = stop or _Never()
    started = time.monotonic()
    s = SeedSummary(layer, zooms)
    s.metatiles = area.count_metatiles(zooms, meta) if total is None else total
    if progress is not None:
        progress.total = s.metatiles
    seen: set[str] = set()
    replacing: set[Meta] = set()     # stored metatiles being rendered again
    client: Client | None = None
    window: Window | None = None

    def extra() -> str:
        return f"rendered {s.rendered} skipped {s.skipped} failed {s.failed}"

    def on_ok(m: Meta, reply: p.Reply) -> None:
        s.rendered += 1
        if m in replacing:
            replacing.discard(m)
            if changed is not None:
                changed(m)
        s.tiles_rendered += m.n * m.n
        got = store.metatile_sizes(layer, m)
        if got is not None:
            idx, sizes = got
            for h in idx.unique():
                if h not in seen:
                    seen.add(h)
                    s.bytes += sizes.get(h, 0)
            s.unique_tiles = len(seen)
        if progress is not None:
            progress.advance(1, extra())

    def on_fail(m: Meta, reason: str) -> None:
        replacing.discard(m)
        s.failed += 1
        s.tiles_failed += m.n * m.n
        if len(s.failures) < 10:
            s.failures.append((str(m), reason))
        if progress is not None:
            progress.advance(1, extra())

    try:
        for m in plan(area, zooms, meta):
            if stop.is_set():
                break
            idx = store.get_index(layer, m)
            render, flags = needs_render(idx, opts)
            if not render:
                s.skipped += 1
                s.tiles_skipped += m.n * m.n
                if progress is not None:
                    progress.advance(1, extra())
                if window is not None and window.in_flight:
                    window.poll(0)
                continue
            if window is None:
                client = endpoint() if callable(endpoint) else connect(endpoint)
                window = Window(client, layer, p.BULK, opts.concurrency, opts.timeout, on_ok, on_fail,
                                flags=("nodata",), stop=stop,
                                tick=progress.maybe_draw if progress is not None else None)
            if idx is not None:
                replacing.add(m)
            if not window.submit(m, flags):
                break
        if window is not None:
            while window.outstanding() and not stop.is_set():
                window.poll(0.2)
            if window.outstanding():  # stopped: a grace period for what is in flight, then go
                if progress is not None:
                    progress.note(f"stopping: waiting up to {opts.grace:g}s for {window.outstanding()} "
                                  "renders in flight (Ctrl-C again to quit now)")
                window.drain(opts.grace)
            s.not_done = len(window.abandon())
            s.busy_answers = window.busy_answers
            s.gone = window.gone
    finally:
        s.interrupted = stop.is_set()
        s.seconds = time.monotonic() - started
        if client is not None:
            client.close()
        if progress is not None:
            progress.finish()
    return s
