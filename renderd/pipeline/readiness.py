"""Which metatiles of a tile set may be rendered while its datasets arrive.

A pyramid stage knows, before any dataset arrives, the datasets it will
get and roughly where each lies (``expected``: an id and lon/lat bounds,
from the file headers; None where not known). A metatile is rendered once
every dataset meeting it has arrived, so that a mosaic is never drawn
with a piece missing, and no sooner.

With ``A`` the area and ``G(E) = A ∩ bounds(E)`` for each expected
dataset E, a metatile M of the plan of A "meets" E when it is in the plan
of ``G(E)`` (its interior meets ``G(E)``'s, ``tools.area.Area``). Then:

- ``arrive(E)`` gives the metatiles that meet E and no dataset still
  pending: each metatile meeting any dataset comes out exactly once, at the
  arrival of the last dataset meeting it;
- ``sweep()`` (once everything arrived) gives the metatiles of A that meet
  no dataset at all (an area larger than the data).

Together they give every metatile of A's plan exactly once.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import shapely
from shapely.geometry import box

from ..tilemath import Meta, tile_range
from ..tools.area import MAX_LAT, Area, _lat, _lon

Bounds = tuple[float, float, float, float]


def bounds_geometry(b: Bounds):
    """A lon/lat box as a shapely geometry; west > east crosses the antimeridian."""
    w, s, e, n = b
    if w > e:
        return shapely.union(box(w, s, 180.0, n), box(-180.0, s, e, n))
    return box(w, s, e, n)


def meta_box(m: Meta):
    """The lon/lat box of a metatile, built exactly as ``Area.metatiles`` builds it."""
    return box(_lon(m.z, m.x0), _lat(m.z, m.y0 + m.n), _lon(m.z, m.x0 + m.n), _lat(m.z, m.y0))


def union_area(bounds: list[Bounds], source: str = "the datasets' bounds") -> Area | None:
    """The area covered by these boxes (None when they cover nothing of the
    Web Mercator world)."""
    if not bounds:
        return None
    geom = shapely.union_all([bounds_geometry(b) for b in bounds]).intersection(
        box(-180.0, -MAX_LAT, 180.0, MAX_LAT))
    if geom.is_empty or geom.area == 0:
        return None
    w, s, e, n = geom.bounds
    from ..tilemath import BBox
    return Area(BBox(w, s, e, n), source, _geometry=geom)


def in_plan(area: Area, z: int, metas: list[Meta], boxes=None) -> np.ndarray:
    """Which of ``metas`` (all of zoom ``z``) ``area.metatiles(z)`` gives,
    by the same test (``boxes``: their ``meta_box`` es, if made already)."""
    if area.is_box:
        xmin, ymin, xmax, ymax = tile_range(area.bbox, z)
        return np.array([m.x0 <= xmax and m.x0 + m.n > xmin and m.y0 <= ymax and m.y0 + m.n > ymin
                         for m in metas], dtype=bool)
    geom = area.geometry
    rows: dict[int, bool] = {}
    ok = np.zeros(len(metas), dtype=bool)
    for i, m in enumerate(metas):
        if m.y0 not in rows:
            north, south = _lat(z, m.y0), _lat(z, m.y0 + m.n)
            strip = geom.intersection(box(-180.0, south, 180.0, north))
            rows[m.y0] = not (strip.is_empty or strip.area == 0)
        ok[i] = rows[m.y0]
    if ok.any():
        if boxes is None:
            boxes = np.array([meta_box(m) for m in metas])
        ok &= shapely.intersects(geom, boxes) & ~shapely.touches(geom, boxes)
    return ok


class Readiness:
    """The metatiles of ``area`` over ``zooms`` for the datasets ``expected``
    (id -> lon/lat bounds, None when not known: it meets the whole area)."""

    def __init__(self, area: Area, zooms: tuple[int, int], meta: int,
                 expected: dict[object, Bounds | None], levels: list[int] | None = None):
        self.area = area
        self.zooms = zooms
        #: the zooms it gives metatiles of (default: every zoom of ``zooms``)
        self.levels = list(range(zooms[0], zooms[1] + 1)) if levels is None else sorted(levels)
        self.meta = meta
        self.ids = list(expected)
        self.geoms = []
        for i in self.ids:
            b = expected[i]
            g = area.geometry if b is None else area.geometry.intersection(bounds_geometry(b))
            self.geoms.append(g)
        self.index = {i: k for k, i in enumerate(self.ids)}
        self.tree = shapely.STRtree(self.geoms) if self.geoms else None
        self.pending = set(range(len(self.ids)))
        self.swept = False

    @property
    def complete(self) -> bool:
        return not self.pending

    def total(self) -> int:
        """Metatiles in the plan of the area (at every zoom of ``zooms``)."""
        return self.area.count_metatiles(self.zooms, self.meta)

    def _meets(self, k: int, boxes) -> np.ndarray:
        g = self.geoms[k]
        return shapely.intersects(g, boxes) & ~shapely.touches(g, boxes)

    def _in_plan(self, z: int, metas: list[Meta], boxes) -> np.ndarray:
        return in_plan(self.area, z, metas, boxes)

    def _blocked(self, boxes, among: set[int]) -> np.ndarray:
        """For each box: whether it meets a dataset of ``among``."""
        out = np.zeros(len(boxes), dtype=bool)
        if not among or self.tree is None or not len(boxes):
            return out
        pairs = self.tree.query(boxes)
        for i, k in zip(pairs[0], pairs[1]):
            k = int(k)
            if not out[i] and k in among:
                out[i] = bool(self._meets(k, boxes[i:i + 1])[0])
        return out

    def _candidates(self, z: int, g) -> list[Meta]:
        """Metatiles of zoom ``z`` whose box may meet ``g`` (a little more)."""
        from ..tilemath import BBox, metatile_size
        w, s, e, n = g.bounds
        eps = 1e-7
        bb = BBox(max(-180.0, w - eps), max(-85.0511, s - eps), min(180.0, e + eps), min(85.0511, n + eps))
        size = metatile_size(z, self.meta)
        xmin, ymin, xmax, ymax = tile_range(bb, z)
        return [Meta(z, mx * size, my * size, size)
                for my in range(ymin // size, ymax // size + 1)
                for mx in range(xmin // size, xmax // size + 1)]

    def arrive(self, item: object) -> Iterator[Meta]:
        """The dataset ``item`` arrived: the metatiles now ready (zoom by zoom)."""
        k = self.index.get(item)
        if k is None or k not in self.pending:
            return
        self.pending.discard(k)
        g = self.geoms[k]
        if g.is_empty:
            return
        for z in self.levels:
            metas = self._candidates(z, g)
            if not metas:
                continue
            boxes = np.array([meta_box(m) for m in metas])
            ok = self._meets(k, boxes)
            if ok.any():
                ok &= self._in_plan(z, metas, boxes)
            if ok.any():
                ok &= ~self._blocked(boxes, self.pending)
            for i in np.nonzero(ok)[0]:
                yield metas[int(i)]

    def sweep(self) -> Iterator[Meta]:
        """Once every dataset arrived: the metatiles meeting none of them."""
        if self.pending:
            raise RuntimeError("sweep before every dataset arrived")
        if self.swept:
            return
        self.swept = True
        everyone = set(range(len(self.ids)))
        for z in self.levels:
            batch: list[Meta] = []
            for m in self.area.metatiles(z, self.meta):
                batch.append(m)
                if len(batch) >= 4096:
                    yield from self._unblocked(batch, everyone)
                    batch = []
            yield from self._unblocked(batch, everyone)

    def _unblocked(self, metas: list[Meta], among: set[int]) -> Iterator[Meta]:
        if not metas:
            return
        blocked = self._blocked(np.array([meta_box(m) for m in metas]), among)
        for m, b in zip(metas, blocked):
            if not b:
                yield m
