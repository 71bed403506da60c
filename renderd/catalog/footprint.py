"""The footprint of a raster's valid pixels: a GeoJSON (multi)polygon in
longitude/latitude that holds every valid pixel (it may hold some invalid
ones; it never leaves out a valid one, so a renderer that skips datasets
whose footprint misses a metatile loses nothing).

The raster is seen through a grid of at most ``GRID_SIDE`` x ``GRID_SIDE``
cells of ``f x f`` pixels; a cell is valid when any of its pixels is. With
statistics the cells come from every pixel (``MaskGrid.add`` on each window
of the statistics' first pass); without, from a decimated read of GDAL's
dataset mask, widened by one cell. Cells are vectorized with
``rasterio.features.shapes``, merged and simplified with shapely (then
widened by the simplification's tolerance, to stay outside every valid
pixel), clipped to the raster's outline, densified and transformed to WGS84.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

#: cells along the longer side of the grid
GRID_SIDE = 256
#: coordinates are rounded to this many decimals of a degree (about 1 cm)
PRECISION = 7


class MaskGrid:
    """Which ``f x f`` cells of a ``width x height`` raster hold a valid pixel."""

    def __init__(self, width: int, height: int, side: int = GRID_SIDE):
        self.f = max(1, math.ceil(max(width, height) / side))
        self.width, self.height = width, height
        self.cells = np.zeros((-(-height // self.f), -(-width // self.f)), dtype=bool)

    def add(self, window: Window, valid: np.ndarray) -> None:
        """Fold in the valid pixels of ``window`` (any band valid)."""
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = valid.shape
        f = self.f
        ri = np.unique(np.r_[0, np.arange((-r0) % f, h, f)])
        ci = np.unique(np.r_[0, np.arange((-c0) % f, w, f)])
        pooled = np.logical_or.reduceat(np.logical_or.reduceat(valid, ri, axis=0), ci, axis=1)
        self.cells[np.ix_((r0 + ri) // f, (c0 + ci) // f)] |= pooled

    @classmethod
    def decimated(cls, src: Any, side: int = GRID_SIDE) -> "MaskGrid":
        """From GDAL's dataset mask read at the grid's size (overviews used
        where there are), widened by one cell: no pixel pass."""
        g = cls(src.width, src.height, side)
        mask = src.dataset_mask(out_shape=g.cells.shape) > 0
        grown = mask.copy()
        grown[1:, :] |= mask[:-1, :]
        grown[:-1, :] |= mask[1:, :]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        g.cells = grown
        return g

    @property
    def share(self) -> float:
        return float(self.cells.mean()) if self.cells.size else 0.0


def outline(transform: Affine, width: int, height: int) -> Any:
    """The raster's outline in its CRS (a shapely polygon)."""
    from shapely.geometry import Polygon
    return Polygon([transform @ (0, 0), transform @ (width, 0), transform @ (width, height),
                    transform @ (0, height)])


def footprint(src: Any, grid: MaskGrid, crs: Any) -> dict[str, Any] | None:
    """The footprint (GeoJSON in WGS84) of the valid cells of ``grid``, a
    grid over ``src`` (an open rasterio dataset); None when no cell is valid."""
    from rasterio.features import shapes
    from shapely.geometry import shape
    from shapely.ops import unary_union

    if not grid.cells.any():
        return None
    edge = outline(src.transform, src.width, src.height)
    if grid.cells.all():
        geom = edge
    else:
        t = src.transform @ Affine.scale(grid.f)
        parts = [shape(g) for g, v in shapes(grid.cells.astype(np.uint8), mask=grid.cells, transform=t)
                 if v]
        cell = math.sqrt(abs(t.a * t.e - t.b * t.d))
        geom = unary_union(parts).simplify(cell, preserve_topology=True)
        geom = geom.buffer(cell, join_style="mitre", mitre_limit=2.0).intersection(edge)
    return to_wgs84(geom, crs)


def to_wgs84(geom: Any, crs: Any) -> dict[str, Any] | None:
    """A shapely geometry in ``crs`` as GeoJSON in longitude/latitude, cut at
    the antimeridian, longitudes within -180..180."""
    import shapely
    from rasterio.warp import transform_geom
    from shapely import segmentize
    from shapely.geometry import box, mapping, shape

    if geom.is_empty:
        return None
    w, s, e, n = geom.bounds
    geom = segmentize(geom, max(e - w, n - s) / 64)
    out = shape(transform_geom(crs, "EPSG:4326", mapping(geom), antimeridian_cutting=True,
                               precision=PRECISION))
    out = wrap_longitudes(out)
    # drop the points densifying left on nearly straight edges; widened back
    # by as much, so no valid pixel falls out
    w, s, e, n = out.bounds
    tol = max(e - w, n - s) / (8 * GRID_SIDE)
    if tol > 0:
        out = out.simplify(tol, preserve_topology=True).buffer(tol, join_style="mitre", mitre_limit=2.0)
        out = out.intersection(box(-180, -90, 180, 90))
    out = shapely.set_precision(out, 10 ** -PRECISION)
    return None if out.is_empty else mapping(out)


def wrap_longitudes(geom: Any) -> Any:
    """Parts beyond +-180 degrees (a source in 0..360 longitudes) moved back
    into -180..180."""
    from shapely.affinity import translate
    from shapely.geometry import box
    from shapely.ops import unary_union

    w, _, e, _ = geom.bounds
    if -180 <= w and e <= 180:
        return geom
    pieces = []
    for shift in (-360, 0, 360):
        part = geom.intersection(box(-180 - shift, -90, 180 - shift, 90))
        if not part.is_empty:
            pieces.append(translate(part, xoff=shift))
    return unary_union(pieces)
