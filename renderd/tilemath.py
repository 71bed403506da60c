"""Tile and metatile math: pure functions and named tuples, no I/O.

Tiles are XYZ (y from the top, as OSM). A metatile is the square block of
``n x n`` tiles rendered as one image; ``n`` is the layer's metatile size
(8 by default) but never more than the grid, so zooms 0-2 have smaller
ones. Tiles inside a metatile are indexed x-major, ``(x - x0) * n + (y - y0)``,
the order of mod_tile's ``.meta`` files.

Web Mercator bounds use mod_tile's rounded constant so that metatiles match
its renders; lon/lat conversions use mercantile.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import mercantile

from .errors import TileError, UsageError

#: Half the width of the Web Mercator world, rounded as mod_tile rounds it.
MERC_HALF = 20037508.3428
MAX_ZOOM = 30
TILE_SIZE = 256


class Tile(NamedTuple):
    z: int
    x: int
    y: int

    def __str__(self) -> str:
        return f"{self.z}/{self.x}/{self.y}"


class Meta(NamedTuple):
    """A metatile: zoom, its top-left tile and its size in tiles."""

    z: int
    x0: int
    y0: int
    n: int

    @property
    def mx(self) -> int:
        """Metatile column (the store's key)."""
        return self.x0 // self.n if self.n else 0

    @property
    def my(self) -> int:
        return self.y0 // self.n if self.n else 0

    def __str__(self) -> str:
        return f"{self.z}/{self.x0}/{self.y0}"


class BBox(NamedTuple):
    """West, south, east, north in degrees."""

    west: float
    south: float
    east: float
    north: float


def grid_size(z: int) -> int:
    """Tiles along one side of the grid at zoom ``z``."""
    return 1 << z


def metatile_size(z: int, meta: int = 8) -> int:
    """Tiles along one side of a metatile at zoom ``z``."""
    return min(meta, 1 << z)


def valid_tile(z: int, x: int, y: int) -> bool:
    return 0 <= z <= MAX_ZOOM and 0 <= x < (1 << z) and 0 <= y < (1 << z)


def check_tile(z: int, x: int, y: int, minzoom: int = 0, maxzoom: int = MAX_ZOOM) -> Tile:
    """Return the tile, or raise ``TileError`` naming what is out of range."""
    if not minzoom <= z <= maxzoom:
        raise TileError(f"zoom {z} outside {minzoom}-{maxzoom}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise TileError(f"tile {z}/{x}/{y} outside the grid 0..{n - 1}")
    return Tile(z, x, y)


def metatile_of(z: int, x: int, y: int, meta: int = 8) -> Meta:
    """The metatile holding tile ``z/x/y``."""
    n = metatile_size(z, meta)
    return Meta(z, x - x % n, y - y % n, n)


def meta_at(z: int, mx: int, my: int, meta: int = 8) -> Meta:
    """The metatile at metatile column ``mx``, row ``my``."""
    n = metatile_size(z, meta)
    return Meta(z, mx * n, my * n, n)


def meta_tiles(m: Meta) -> Iterator[Tile]:
    """The tiles of a metatile, x-major (the order of the index)."""
    for dx in range(m.n):
        for dy in range(m.n):
            yield Tile(m.z, m.x0 + dx, m.y0 + dy)


def tile_index(m: Meta, x: int, y: int) -> int:
    """Position of tile ``x, y`` in the metatile's x-major index."""
    dx, dy = x - m.x0, y - m.y0
    if not (0 <= dx < m.n and 0 <= dy < m.n):
        raise TileError(f"tile {m.z}/{x}/{y} is not in metatile {m}")
    return dx * m.n + dy


def index_tile(m: Meta, i: int) -> Tile:
    """Inverse of ``tile_index``."""
    return Tile(m.z, m.x0 + i // m.n, m.y0 + i % m.n)


def merc_bounds(z: int, x: int, y: int, nx: int = 1, ny: int = 1) -> tuple[float, float, float, float]:
    """Web Mercator (minx, miny, maxx, maxy) of ``nx x ny`` tiles from ``x, y``.

    Same constant and order of operations as mod_tile, so metatiles match.
    """
    b0, b1 = -MERC_HALF, MERC_HALF
    scale = float(1 << z)
    minx = b0 + (b1 - b0) * (x / scale)
    miny = b1 - (b1 - b0) * ((y + ny) / scale)
    maxx = b0 + (b1 - b0) * ((x + nx) / scale)
    maxy = b1 - (b1 - b0) * (y / scale)
    return minx, miny, maxx, maxy


def meta_merc_bounds(m: Meta) -> tuple[float, float, float, float]:
    return merc_bounds(m.z, m.x0, m.y0, m.n, m.n)


def meta_lnglat_bounds(m: Meta) -> BBox:
    """Degrees bounds of a metatile (mercantile's exact math)."""
    ul = mercantile.ul(m.x0, m.y0, m.z)
    lr = mercantile.ul(m.x0 + m.n, m.y0 + m.n, m.z)
    return BBox(ul.lng, lr.lat, lr.lng, ul.lat)


def tile_lnglat_bounds(t: Tile) -> BBox:
    b = mercantile.bounds(t.x, t.y, t.z)
    return BBox(b.west, b.south, b.east, b.north)


def tiles_in_bbox(bbox: BBox, z: int) -> Iterator[Tile]:
    """Tiles at zoom ``z`` that intersect ``bbox`` (degrees)."""
    for t in mercantile.tiles(*bbox, zooms=[z]):
        yield Tile(t.z, t.x, t.y)


def tile_range(bbox: BBox, z: int) -> tuple[int, int, int, int]:
    """Inclusive tile index range (xmin, ymin, xmax, ymax) covering ``bbox``."""
    eps = 1e-9
    ul = mercantile.tile(bbox.west, bbox.north, z)
    lr = mercantile.tile(bbox.east - eps, bbox.south + eps, z)
    last = (1 << z) - 1
    return (max(0, ul.x), max(0, ul.y), min(last, lr.x), min(last, lr.y))


def metatiles_in_bbox(bbox: BBox, z: int, meta: int = 8) -> Iterator[Meta]:
    """Metatiles at zoom ``z`` that intersect ``bbox``, row by row."""
    n = metatile_size(z, meta)
    xmin, ymin, xmax, ymax = tile_range(bbox, z)
    for my in range(ymin // n, ymax // n + 1):
        for mx in range(xmin // n, xmax // n + 1):
            yield Meta(z, mx * n, my * n, n)


def count_tiles_in_bbox(bbox: BBox, z: int) -> int:
    xmin, ymin, xmax, ymax = tile_range(bbox, z)
    return (xmax - xmin + 1) * (ymax - ymin + 1)


def parent_metatiles(m: Meta, minzoom: int, meta: int = 8) -> Iterator[Meta]:
    """Metatiles of lower zooms (down to ``minzoom``) that contain ``m``."""
    for z in range(m.z - 1, minzoom - 1, -1):
        shift = m.z - z
        yield metatile_of(z, m.x0 >> shift, m.y0 >> shift, meta)


def child_metatiles(m: Meta, maxzoom: int, meta: int = 8) -> Iterator[Meta]:
    """Metatiles of higher zooms (up to ``maxzoom``) inside ``m``."""
    for z in range(m.z + 1, maxzoom + 1):
        shift = z - m.z
        n = metatile_size(z, meta)
        x0, y0 = m.x0 << shift, m.y0 << shift
        span = m.n << shift
        for x in range(x0, x0 + span, n):
            for y in range(y0, y0 + span, n):
                yield Meta(z, x, y, n)


# --- parsing user input -------------------------------------------------

def parse_zoom_range(text: str, lo: int = 0, hi: int = MAX_ZOOM) -> tuple[int, int]:
    """``"5"`` or ``"3-9"`` into (min, max); ``UsageError`` otherwise."""
    parts = str(text).strip().split("-")
    try:
        if len(parts) == 1:
            a = b = int(parts[0])
        elif len(parts) == 2:
            a, b = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise UsageError(f"zoom range {text!r} is not Z or A-B") from None
    if a > b:
        raise UsageError(f"zoom range {text!r} is reversed")
    if a < lo or b > hi:
        raise UsageError(f"zoom range {text!r} outside {lo}-{hi}")
    return a, b


def parse_bbox(text: str) -> BBox:
    """``"W,S,E,N"`` in degrees; ``UsageError`` if malformed or off the world."""
    try:
        w, s, e, n = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"bbox {text!r} is not W,S,E,N") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise UsageError(f"bbox {text!r} has a non-finite number")
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise UsageError(f"bbox {text!r} is outside the world")
    if w >= e:
        raise UsageError(f"bbox {text!r}: west must be less than east")
    if s >= n:
        raise UsageError(f"bbox {text!r}: south must be less than north")
    lat = mercantile.LL_EPSILON
    return BBox(w, max(s, -85.0511287798066 + lat), e, min(n, 85.0511287798066 - lat))


def parse_tile(text: str) -> Tile:
    """``"z/x/y"`` into a Tile (grid-checked)."""
    try:
        z, x, y = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise TileError(f"tile {text!r} is not z/x/y") from None
    return check_tile(z, x, y)
