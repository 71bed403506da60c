"""Expiry: osm2pgsql's lists of changed tiles applied to the store.

osm2pgsql (``-e``/``--expire-tiles``, or the flex ``expire`` outputs) writes
one ``z/x/y`` line per changed tile. A change to a tile changes every tile
above it (parents, down to ``--min-zoom``) and below it (children, up to
the layer's maxzoom). Each line is expanded to the metatiles of every zoom
in that range that overlap the tile, and each metatile that is stored is

- ``dirty`` (default): marked stale; nginx serves it at once and queues a
  re-render,
- ``delete``: removed (its blobs go when nothing else uses them),
- ``render``: marked stale, then re-rendered at the expiry priority.

As mod_tile's ``render_expired`` does, only metatiles that are stored are
touched: nothing is rendered for an area nobody has looked at. Children of
a low-zoom line can be millions of metatiles; when a zoom's expansion is
larger than ``scan_limit`` the store's list of metatiles at that zoom is
scanned instead of enumerating the expansion.

Malformed lines (not ``z/x/y``, outside the grid) are counted and a few are
reported; they never stop the run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TextIO

from .. import protocol as p
from ..client import Client, Endpoint, StopFlag, Window, connect
from ..errors import DaemonError, UsageError, file_errors_as_usage
from ..store.base import Store
from ..tilemath import Meta, Tile, metatile_of, metatile_size, valid_tile

MODES = ("dirty", "delete", "render")
_LINE = re.compile(r"\s*(\d{1,2})\s*/\s*(\d{1,10})\s*/\s*(\d{1,10})\s*")


@dataclass
class ExpireSummary:
    layer: str
    mode: str
    zooms: tuple[int, int]
    lines: int = 0
    malformed: int = 0
    tiles: int = 0
    candidates: int = 0
    metatiles: int = 0
    not_stored: int = 0
    rendered: int = 0
    failed: int = 0
    seconds: float = 0.0
    bad_examples: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def lines_out(self) -> list[str]:
        verb = {"dirty": "marked stale", "delete": "deleted", "render": "marked stale and queued"}[self.mode]
        out = [f"expire ({self.mode}): layer {self.layer}, zooms {self.zooms[0]}-{self.zooms[1]}: "
               f"{self.lines} lines, {self.tiles} distinct tiles, {self.malformed} malformed",
               f"  metatiles: {self.metatiles} {verb}, {self.not_stored} in the area not stored"]
        if self.mode == "render":
            out.append(f"  renders:   {self.rendered} done, {self.failed} failed")
        out.append(f"  time:      {self.seconds:.2f} s")
        for ex in self.bad_examples:
            out.append(f"  malformed {ex}")
        for meta, reason in self.failures:
            out.append(f"  failed {meta}: {reason}")
        return out

    def as_dict(self) -> dict:
        return {"layer": self.layer, "mode": self.mode, "zooms": list(self.zooms), "lines": self.lines,
                "malformed": self.malformed, "tiles": self.tiles, "metatiles": self.metatiles,
                "not_stored": self.not_stored, "rendered": self.rendered, "failed": self.failed,
                "seconds": round(self.seconds, 3)}


def read_tiles(stream: Iterable[str], summary: ExpireSummary, max_examples: int = 5) -> set[Tile]:
    """The distinct tiles of an expiry list; bad lines are counted in ``summary``."""
    tiles: set[Tile] = set()
    for no, line in enumerate(stream, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        summary.lines += 1
        m = _LINE.fullmatch(line.rstrip("\r\n"))
        if m:
            z, x, y = (int(g) for g in m.groups())
            if valid_tile(z, x, y):
                tiles.add(Tile(z, x, y))
                continue
        summary.malformed += 1
        if len(summary.bad_examples) < max_examples:
            summary.bad_examples.append(f"line {no}: {line.strip()[:60]!r}")
    summary.tiles = len(tiles)
    return tiles


def _children_range(t: Tile, z: int, n: int) -> tuple[int, int, int, int]:
    """Inclusive metatile columns and rows at zoom ``z`` (> t.z) under tile ``t``."""
    s = z - t.z
    x0, x1 = t.x << s, ((t.x + 1) << s) - 1
    y0, y1 = t.y << s, ((t.y + 1) << s) - 1
    return x0 // n, x1 // n, y0 // n, y1 // n


def expand(tiles: set[Tile], zoom: int, meta: int = 8, scan_limit: int = 200_000) -> set[Meta] | None:
    """The metatiles at ``zoom`` overlapping any of ``tiles``, or None when
    there would be more than ``scan_limit`` (then ``overlaps`` tests a
    metatile instead)."""
    n = metatile_size(zoom, meta)
    out: set[Meta] = set()
    ranges = []
    count = 0
    for t in tiles:
        if zoom <= t.z:
            s = t.z - zoom
            out.add(metatile_of(zoom, t.x >> s, t.y >> s, meta))
        else:
            r = _children_range(t, zoom, n)
            ranges.append(r)
            count += (r[1] - r[0] + 1) * (r[3] - r[2] + 1)
            if count + len(out) > scan_limit:
                return None
    for mx0, mx1, my0, my1 in ranges:
        for mx in range(mx0, mx1 + 1):
            for my in range(my0, my1 + 1):
                out.add(Meta(zoom, mx * n, my * n, n))
    return out


def overlaps(m: Meta, parents: set[Meta], lower: dict[int, set[tuple[int, int]]]) -> bool:
    """Whether metatile ``m`` overlaps a tile of the list: it holds a listed
    tile's ancestor at its zoom (``parents``), or a listed tile of a lower
    zoom (``lower``, grouped by zoom) holds one of its tiles."""
    if m in parents:
        return True
    for tz, xy in lower.items():
        s = m.z - tz
        xa, xb = m.x0 >> s, (m.x0 + m.n - 1) >> s
        ya, yb = m.y0 >> s, (m.y0 + m.n - 1) >> s
        for x in range(xa, xb + 1):
            for y in range(ya, yb + 1):
                if (x, y) in xy:
                    return True
    return False


def targets(store: Store, layer: str, tiles: set[Tile], zooms: tuple[int, int], meta: int = 8,
            scan_limit: int = 200_000) -> Iterator[Meta]:
    """Every metatile of the expansion, zoom by zoom.

    Small expansions are enumerated (the caller learns from the store
    whether each is stored); large ones come from a scan of the store's
    metatiles at that zoom, so they are all stored.
    """
    for z in range(zooms[0], zooms[1] + 1):
        metas = expand(tiles, z, meta, scan_limit)
        if metas is not None:
            yield from sorted(metas)
            continue
        parents: set[Meta] = set()
        lower: dict[int, set[tuple[int, int]]] = {}
        for t in tiles:
            if t.z >= z:
                s = t.z - z
                parents.add(metatile_of(z, t.x >> s, t.y >> s, meta))
            else:
                lower.setdefault(t.z, set()).add((t.x, t.y))
        # collected before anyone acts on them: deleting while a store is
        # being listed is not something every store promises to survive
        hits = [idx.meta for idx in store.iter_indexes(layer, z) if overlaps(idx.meta, parents, lower)]
        yield from sorted(hits)


def expire(store: Store, layer: str, stream: Iterable[str], zooms: tuple[int, int], mode: str = "dirty",
           meta: int = 8, endpoint: Endpoint | None = None, concurrency: int = 8,
           timeout: float = 3600.0, scan_limit: int = 200_000, stop: StopFlag | None = None,
           log: Callable[[str], None] | None = None,
           changed: Callable[[Meta], None] | None = None) -> ExpireSummary:
    """Apply an expiry list; ``changed(meta)`` is called for each metatile
    marked stale or deleted, right after the store change (for nginx's hot
    cache, see ``tools.purge``)."""
    if mode not in MODES:
        raise UsageError(f"unknown expire mode {mode!r} (dirty, delete or render)")
    started = time.monotonic()
    s = ExpireSummary(layer, mode, zooms)
    tiles = read_tiles(stream, s)
    client: Client | None = None
    window: Window | None = None

    def on_ok(m: Meta, reply: p.Reply) -> None:
        s.rendered += 1

    def on_fail(m: Meta, reason: str) -> None:
        s.failed += 1
        if len(s.failures) < 10:
            s.failures.append((str(m), reason))

    try:
        for m in targets(store, layer, tiles, zooms, meta, scan_limit):
            if stop is not None and stop.is_set():
                break
            s.candidates += 1
            if mode == "delete":
                done = store.delete_metatile(layer, m)
            else:
                done = store.mark_stale(layer, m)
            if not done:
                s.not_stored += 1
                continue
            s.metatiles += 1
            if changed is not None:
                changed(m)
            if mode == "render":
                if window is None:
                    if endpoint is None:
                        raise UsageError("--mode render needs the daemon's address")
                    client = connect(endpoint)
                    window = Window(client, layer, p.EXPIRY, concurrency, timeout, on_ok, on_fail,
                                    flags=("nodata", "force"), stop=stop)
                if not window.submit(m):
                    break
        if window is not None:
            window.finish(grace=5.0)
            if window.gone:
                raise DaemonError(f"{window.gone}; {s.rendered} of {s.metatiles} re-renders done "
                                  "(the rest are marked stale)")
    finally:
        if client is not None:
            client.close()
        s.seconds = time.monotonic() - started
    return s


def open_input(path: str | None) -> TextIO:
    import sys
    if path in (None, "-"):
        return sys.stdin
    with file_errors_as_usage(f"expiry list {path}"):
        return open(path, encoding="utf-8", errors="replace")
