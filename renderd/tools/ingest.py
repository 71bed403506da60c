"""``ingest``: rasters matching a ``{key}`` pattern into the catalog, and the
stored metatiles they change marked stale.

A run has two phases. First every file the pattern matches is checked:
its keys (from the name) and its header (a raster GDAL reads, with a CRS
and a geotransform). One bad file stops the run before anything is written,
with one line naming it. Then each file is described (statistics,
footprint) and written in a transaction of its own; a file that fails
there (pixels that cannot be decoded) stops the run too, is not written,
and the files before it stay ingested (a second run with
``--skip-existing`` continues).

A file whose row is new or changed changes the metatiles it covers: for
every raster layer of the configuration that its collection feeds
(``collection`` equal, ``where`` matching its keys, a value for each of the
layer's ``keys``), the stored metatiles of that tile set over its bounds
(old and new) at the layer's zooms are marked stale and nginx is told, as
``expire`` does. Only stored metatiles are touched: a zoom whose metatiles
over the bounds number more than ``scan_limit`` is done from the store's
list of that zoom instead of by enumeration. A file read again with the
same content (everything but the ingest time) leaves its row and the
store alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

from ..catalog.base import Catalog, check_collection
from ..catalog.codec import same_content
from ..catalog.describe import describe, open_raster, native_bounds, wgs84_bounds
from ..catalog.model import Bounds, Dataset
from ..catalog.pattern import parse_pattern
from ..catalog.stats import DEFAULT_MAX_BYTES
from ..config import LayerConfig
from ..errors import IngestError, RenderdError
from ..store.base import Store
from ..tilemath import BBox, Meta, metatile_size, tile_range
from ..tilesets import layer_tileset, with_scale

#: metatiles over a bounding box at one zoom above which the store is scanned
SCAN_LIMIT = 200_000
#: latitudes Web Mercator reaches
MERC_LAT = 85.0511287798066


# --- which stored metatiles a dataset meets ---------------------------------

def merc_boxes(wgs84: Bounds) -> list[BBox]:
    """The lon/lat boxes of bounds as tile math takes them: split at the
    antimeridian, latitudes clipped to Web Mercator's (none if beyond)."""
    w, s, e, n = wgs84
    eps = 1e-9
    s, n = max(s, -MERC_LAT + eps), min(n, MERC_LAT - eps)
    if s >= n:
        return []
    spans = [(w, 180.0), (-180.0, e)] if w > e else [(w, e)]
    return [BBox(a, s, b, n) for a, b in spans if a < b]


def stored_metatiles(store: Store, tileset: str, boxes: Iterable[BBox], zooms: tuple[int, int],
                     meta: int = 8, scan_limit: int = SCAN_LIMIT) -> Iterator[Meta]:
    """The stored metatiles of ``tileset`` meeting ``boxes``, zoom by zoom,
    sorted. A zoom with at most ``scan_limit`` metatiles over the boxes is
    enumerated (the caller learns from the store which are stored); a
    larger one comes from a scan of the store's metatiles at that zoom."""
    boxes = list(boxes)
    for z in range(zooms[0], zooms[1] + 1):
        n = metatile_size(z, meta)
        ranges = []
        for b in boxes:
            x0, y0, x1, y1 = tile_range(b, z)
            ranges.append((x0 // n, x1 // n, y0 // n, y1 // n))
        count = sum((mx1 - mx0 + 1) * (my1 - my0 + 1) for mx0, mx1, my0, my1 in ranges)
        if count <= scan_limit:
            metas = {Meta(z, mx * n, my * n, n) for mx0, mx1, my0, my1 in ranges
                     for mx in range(mx0, mx1 + 1) for my in range(my0, my1 + 1)}
        else:
            # collected before any is marked: marking while listing is not
            # something every store promises to survive
            metas = {idx.meta for idx in store.iter_indexes(tileset, z)
                     if any(mx0 <= idx.meta.mx <= mx1 and my0 <= idx.meta.my <= my1
                            for mx0, mx1, my0, my1 in ranges)}
        yield from sorted(metas)


class Restale:
    """Marks stale what changed datasets of ``collection`` cover, in the
    tile sets of ``layers`` they feed; opens the store on first need.
    ``purge(tileset)`` gives the ``FrontPurge`` telling nginx (or None)."""

    def __init__(self, layers: Iterable[LayerConfig], collection: str, open_store: Callable[[], Store],
                 purge: Callable[[str], object] | None = None, scan_limit: int = SCAN_LIMIT):
        self.layers = [lyr for lyr in layers if lyr.kind == "raster" and lyr.collection == collection]
        self.open_store = open_store
        self.purge = purge
        self.scan_limit = scan_limit
        self.store: Store | None = None
        self.fronts: dict[str, object] = {}
        self.marked: dict[str, int] = {}

    def mark(self, old: Dataset | None, new: Dataset) -> int:
        """Mark the metatiles ``old`` (the row before, if any) and ``new``
        cover; how many were marked."""
        done = 0
        for lyr in self.layers:
            areas: dict[str, list[BBox]] = {}
            for ds in (old, new):
                name = None if ds is None else layer_tileset(lyr, ds.keys)
                if name is not None:
                    for n in lyr.scales:     # (a HiDPI tile set is fed by the same datasets)
                        areas.setdefault(with_scale(name, n), []).extend(merc_boxes(ds.wgs84_bounds))
            for name, boxes in areas.items():
                done += self._mark(lyr, name, boxes)
        return done

    def _mark(self, lyr: LayerConfig, tileset: str, boxes: list[BBox]) -> int:
        if self.store is None:
            self.store = self.open_store()
        front = self._front(tileset)
        done = 0
        for m in stored_metatiles(self.store, tileset, boxes, (lyr.minzoom, lyr.maxzoom),
                                  lyr.metatile, self.scan_limit):
            if self.store.mark_stale(tileset, m):
                done += 1
                if front is not None:
                    front.add(m)
        self.marked[tileset] = self.marked.get(tileset, 0) + done
        return done

    def _front(self, tileset: str):
        if self.purge is None:
            return None
        if tileset not in self.fronts:
            self.fronts[tileset] = self.purge(tileset)
        return self.fronts[tileset]

    def close(self) -> None:
        try:
            for front in self.fronts.values():
                front.close()
        finally:
            if self.store is not None:
                self.store.close()
                self.store = None

    def nginx(self) -> tuple[int, int, list[str]]:
        """(metatiles nginx was told of, hot tiles it marked, warnings)."""
        told = sum(getattr(f, "purged", 0) for f in self.fronts.values())
        tiles = sum(getattr(f, "tiles", 0) for f in self.fronts.values())
        warnings = [w for w in (f.warning() for f in self.fronts.values()) if w]
        return told, tiles, warnings[:1]


# --- the run ----------------------------------------------------------------

@dataclass
class IngestSummary:
    collection: str
    files: int = 0
    ingested: int = 0      # new rows
    updated: int = 0       # rows that changed
    unchanged: int = 0     # read again, the same
    skipped: int = 0       # --skip-existing: same size and mtime
    failed: int = 0
    stale: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def line(self) -> str:
        return (f"ingest: collection {self.collection}: {self.files} files: {self.ingested} ingested, "
                f"{self.updated} updated, {self.unchanged} unchanged, {self.skipped} skipped, "
                f"{self.failed} failed in {self.seconds:.2f} s")

    def lines_out(self) -> list[str]:
        out = [self.line()]
        if self.stale:
            where = ", ".join(f"{n} {t}" for t, n in sorted(self.stale.items()))
            out.append(f"  metatiles: {sum(self.stale.values())} marked stale ({where})")
        return out

    def as_dict(self) -> dict:
        return {"collection": self.collection, "files": self.files, "ingested": self.ingested,
                "updated": self.updated, "unchanged": self.unchanged, "skipped": self.skipped,
                "failed": self.failed, "stale": dict(sorted(self.stale.items())),
                "seconds": round(self.seconds, 3), "error": self.error}


def check_files(pattern: str, known: Callable[[str], bool] | None = None) -> list[tuple[str, dict[str, str]]]:
    """Phase one: the files of ``pattern`` with their keys, every header
    checked but of those ``known(abspath)`` says are ingested unchanged
    (``--skip-existing``); ``IngestError`` naming the first bad one."""
    files = parse_pattern(pattern).files()
    for path, _ in files:
        if known is not None and known(os.path.abspath(path)):
            continue
        with open_raster(path) as src:
            wgs84_bounds(src, native_bounds(src), path)
    return files


@dataclass(frozen=True)
class Ingested:
    """What ``ingest_iter`` did with one file: ``status`` is ``ingested``
    (a new row), ``updated`` (a changed one), ``unchanged`` (read again, the
    same) or ``skipped`` (``skip_existing``: same size and mtime); ``dataset``
    is its row in the catalog."""

    path: str
    status: str
    dataset: Dataset


def ingest_iter(catalog: Catalog, files: Iterable[tuple[str, dict[str, str]]], collection: str, *,
                skip_existing: bool = False, stats: bool = True, restale: Restale | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES,
                now: Callable[[], float] = time.time) -> Iterator[Ingested]:
    """Ingest each (path, keys) of ``files`` into ``collection`` as it comes
    (an iterable that may block for its next file: a stage's inbox), each in
    a transaction of its own; what was done with each file is yielded. A
    file that cannot be described raises ``IngestError``: the files before
    it stay ingested."""
    check_collection(collection)
    for path, keys in files:
        path = os.path.abspath(path)
        old = catalog.get_path(collection, path)
        if skip_existing and old is not None and _size_mtime(path) == (old.size, old.mtime):
            yield Ingested(path, "skipped", old)
            continue
        new = describe(path, collection, keys, stats=stats, max_bytes=max_bytes, now=now)
        if old is not None and same_content(old, new):
            yield Ingested(path, "unchanged", old)
            continue
        dataset_id = catalog.upsert(new)
        if restale is not None:
            _restale(restale, old, new)
        yield Ingested(path, "ingested" if old is None else "updated", replace(new, id=dataset_id))


def ingest(catalog: Catalog, pattern: str, collection: str, *, skip_existing: bool = False,
           stats: bool = True, restale: Restale | None = None, progress=None,
           files: list[tuple[str, dict[str, str]]] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
           now: Callable[[], float] = time.time) -> IngestSummary:
    """Ingest the files of ``pattern`` (or the checked ``files`` of
    ``check_files``) into ``collection``. The run stops at the first file
    that fails: ``summary.error`` says why (the caller raises it)."""
    check_collection(collection)
    started = time.monotonic()
    s = IngestSummary(collection)
    if files is None:
        files = check_files(pattern)
    s.files = len(files)
    try:
        for done in ingest_iter(catalog, files, collection, skip_existing=skip_existing, stats=stats,
                                restale=restale, max_bytes=max_bytes, now=now):
            setattr(s, done.status, getattr(s, done.status) + 1)
            if progress is not None:
                progress.advance(1, extra=os.path.basename(done.path))
    except IngestError as e:
        s.failed += 1
        s.error = str(e)
    finally:
        if restale is not None:
            s.stale = {t: n for t, n in restale.marked.items() if n}
        s.seconds = time.monotonic() - started
    return s


def ingested_files(catalog: Catalog, collection: str) -> Callable[[str], bool]:
    """``known(path)`` for ``check_files``: whether ``path`` is in
    ``collection`` with its current size and mtime (one query for all)."""
    rows = catalog.files(collection)
    return lambda path: path in rows and _size_mtime(path) == rows[path]


def _restale(restale: Restale, old: Dataset | None, new: Dataset) -> None:
    try:
        restale.mark(old, new)
    except RenderdError as e:
        raise RenderdError(f"{new.path} is ingested, but its stored metatiles could not be marked "
                           f"stale: {e}") from None


def _size_mtime(path: str) -> tuple[int, float] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime

