"""Reading raster datasets into a metatile's Web Mercator pixel grid.

One windowed read per dataset per metatile, at the overview that matches
the metatile's pixel size, chosen from the catalog's header fields (no file
is opened to decide):

- **Overview.** The metatile's pixel size over the dataset's native pixel
  size in Web Mercator gives the wanted decimation; the overview taken is
  the coarsest whose factor is below it times 1.2 (1.0 for resampling other
  than nearest) plus 0.1: GDAL's own rule for a decimated read, so a tile
  comes from the same level that a per-tile reader (rio-tiler) reads.
- **Fast path** (nearest, an axis-aligned source in EPSG:4326 or
  EPSG:3857). Web Mercator to longitude/latitude is separable: a column's
  longitude does not depend on the row, a row's latitude not on the column.
  So the source column of every output column and the source row of every
  output row are two index vectors, computed once per metatile; the source
  window they span is decoded with one plain (unresampled) read, and the
  output is two ``numpy.take`` gathers. This gives the pixels GDAL's warper
  gives for nearest (the tests measure it) at a fraction of the cost. A
  source already on the grid at that level needs no gather at all.
- **Fallback** (any other CRS or resampling): a ``WarpedVRT`` of the
  chosen overview level onto the part of the metatile grid the dataset's
  bounds cover, with the layer's resampling.

A read gives a ``Piece``: the values of the covered sub-rectangle,
pixel-interleaved ``(h, w, bands)`` in the dataset's dtype, and a boolean
validity mask from the dataset's own kind of mask: an alpha band, a nodata
value (NaN included), an internal (per-dataset) mask, or none (everything
inside the dataset is valid).

Open datasets are kept in an LRU (``DatasetPool``) across metatiles, keyed
by path, modification time and overview level, so a re-ingested file is
opened anew.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..catalog.model import Dataset
from ..errors import RenderError
from ..tilemath import MERC_HALF, Meta, meta_merc_bounds

#: GDAL settings of the process's reads: no directory listing for sidecar files on open
GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
_PROCESS_ENV: Any = None


def gdal_env() -> None:
    """Enter one rasterio environment for the life of this thread, with rasterio's own PROJ data.

    Idempotent. Without an environment, every ``rasterio.open`` makes one
    and re-reads ``PROJ_LIB``, which importing the Mapnik wheel points at a
    folder of its own without ``proj.db``: in a worker with Mapnik and raster
    layers rasterio would then know no CRS. So a single environment is
    entered (and never left) and PROJ is pointed at rasterio's data when the
    variable names a folder without ``proj.db``.
    """
    global _PROCESS_ENV
    import rasterio
    import rasterio.env as renv

    if renv.local._env is None:
        _PROCESS_ENV = rasterio.Env(**GDAL_OPTIONS)
        _PROCESS_ENV.__enter__()
    for var in ("PROJ_DATA", "PROJ_LIB"):
        path = os.environ.get(var)
        if path:
            if not os.path.isfile(os.path.join(path, "proj.db")):
                wheel = renv.PROJDataFinder().search_wheel()
                if wheel:
                    renv.set_proj_data_search_path(wheel)
            return


EARTH_RADIUS = 6378137.0
#: what a source's pixel edge is nudged by before flooring, as GDAL does
EPSILON = 1e-10
#: GDAL's oversampling threshold for choosing an overview (nearest / others)
OVERVIEW_THRESHOLD = {"nearest": 1.2}


@dataclass(frozen=True)
class Grid:
    """A metatile's pixel grid in Web Mercator: top-left corner, pixel size, size."""

    left: float
    top: float
    res: float
    width: int
    height: int

    @classmethod
    def of(cls, meta: Meta, tile_size: int = 256) -> "Grid":
        minx, _, maxx, maxy = meta_merc_bounds(meta)
        side = meta.n * tile_size
        return cls(minx, maxy, (maxx - minx) / side, side, side)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.left, self.top - self.res * self.height, self.left + self.res * self.width,
                self.top)

    @cached_property
    def x_centers(self) -> np.ndarray:
        return self.left + (np.arange(self.width) + 0.5) * self.res

    @cached_property
    def y_centers(self) -> np.ndarray:
        return self.top - (np.arange(self.height) + 0.5) * self.res

    @cached_property
    def lon_centers(self) -> np.ndarray:
        return np.degrees(self.x_centers / EARTH_RADIUS)

    @cached_property
    def lat_centers(self) -> np.ndarray:
        return np.degrees(2.0 * np.arctan(np.exp(self.y_centers / EARTH_RADIUS)) - math.pi / 2)

    def transform(self, col: int = 0, row: int = 0) -> Any:
        from affine import Affine
        return Affine(self.res, 0.0, self.left + col * self.res, 0.0, -self.res,
                      self.top - row * self.res)


@dataclass
class Piece:
    """What one dataset gives a metatile: the covered rows and columns of the grid."""

    rows: slice
    cols: slice
    values: np.ndarray          # (h, w, bands), the dataset's dtype
    valid: np.ndarray           # (h, w) bool
    warped: bool = False        # through GDAL's warper (else the fast path)


@dataclass
class ReadTimes:
    """Seconds spent, added up over a metatile's reads."""

    read: float = 0.0           # opening and decoding source windows
    warp: float = 0.0           # index gathers, or GDAL's warper (decode included)
    opens: int = 0
    fast: int = 0
    warped: int = 0


# --- which CRS and overview ---------------------------------------------

_CRS_KINDS: dict[str, str] = {}


def crs_kind(crs: str) -> str:
    """``"4326"``, ``"3857"`` or ``"other"`` for a catalog CRS string."""
    kind = _CRS_KINDS.get(crs)
    if kind is None:
        from rasterio.crs import CRS
        try:
            c = CRS.from_user_input(crs)
        except Exception:
            kind = "other"
        else:
            kind = ("4326" if c == CRS.from_epsg(4326)
                    else "3857" if c == CRS.from_epsg(3857) else "other")
        _CRS_KINDS[crs] = kind
    return kind


_NATIVE_RES: dict[tuple, float] = {}


def native_merc_res(ds: Dataset) -> float:
    """The dataset's full-resolution pixel size in Web Mercator metres.

    As rio-tiler computes it (GDAL's suggested warp output over the
    dataset, latitudes clipped to +-85.06 for a geographic source), so that
    both choose the same overview.
    """
    key = (ds.crs, ds.transform, ds.width, ds.height)
    res = _NATIVE_RES.get(key)
    if res is None:
        kind = crs_kind(ds.crs)
        if kind == "3857":
            res = abs(ds.transform[0])
        else:
            from rasterio.warp import calculate_default_transform
            left, bottom, right, top = ds.bounds
            width, height = ds.width, ds.height
            if kind == "4326" and (bottom < -85.06 or top > 85.06):
                a, e = ds.transform[0], ds.transform[4]
                bottom, top = max(bottom, -85.06), min(top, 85.06)
                height = round((top - bottom) / abs(e))
                width = round((right - left) / abs(a))
            t, _, _ = calculate_default_transform(ds.crs, "EPSG:3857", width, height,
                                                  left, bottom, right, top)
            res = abs(t.a)
        _NATIVE_RES[key] = res
    return res


def overview_factors(ds: Dataset) -> list[float]:
    """The true decimation of each internal overview (its size is rounded up)."""
    return [min(ds.width / math.ceil(ds.width / f), ds.height / math.ceil(ds.height / f))
            for f in ds.overviews]


def choose_overview(ds: Dataset, res: float, resampling: str = "nearest") -> int:
    """0 for full resolution, k for the k-th overview (GDAL's choice for this decimation)."""
    desired = res / native_merc_res(ds)
    threshold = OVERVIEW_THRESHOLD.get(resampling, 1.0)
    best, best_factor = 0, 1.0
    for i, f in enumerate(overview_factors(ds)):
        if f >= desired * threshold + 0.1 or f <= best_factor:
            continue
        best, best_factor = i + 1, f
        if abs(desired - f) < 0.1:
            break
    return best


# --- open datasets ----------------------------------------------------------

@dataclass
class Source:
    """An open dataset at one overview level, and what its masks are."""

    handle: Any
    path: str
    level: int
    bands: int
    dtype: str
    nodata: float | None
    alpha: int                  # 1-based index of an alpha band, 0 if none
    per_dataset_mask: bool


class DatasetPool:
    """An LRU of open datasets: (path, mtime, overview level) -> ``Source``."""

    def __init__(self, size: int = 64):
        self.size = size
        self.opens = 0
        self._items: OrderedDict[tuple[str, float, int], Source] = OrderedDict()

    def get(self, ds: Dataset, level: int) -> Source:
        key = (ds.path, ds.mtime, level)
        src = self._items.get(key)
        if src is not None:
            self._items.move_to_end(key)
            return src
        src = self._open(ds, level)
        self._items[key] = src
        while len(self._items) > self.size:
            _, old = self._items.popitem(last=False)
            old.handle.close()
        return src

    def _open(self, ds: Dataset, level: int) -> Source:
        import rasterio
        from rasterio.enums import ColorInterp, MaskFlags

        if not os.path.exists(ds.path):
            raise RenderError(f"dataset {ds.path} is gone (it is in the catalog but not on disk)")
        try:
            h = rasterio.open(ds.path, **({"overview_level": level - 1} if level else {}))
        except Exception as e:  # rasterio raises RasterioIOError, CPLE_* types
            raise RenderError(f"cannot open dataset {ds.path}: {' '.join(str(e).split())}") from None
        self.opens += 1
        alpha = next((i + 1 for i, c in enumerate(h.colorinterp) if c == ColorInterp.alpha), 0)
        flags = h.mask_flag_enums[0] if h.count else ()
        return Source(handle=h, path=ds.path, level=level, bands=h.count, dtype=h.dtypes[0],
                      nodata=h.nodata, alpha=alpha,
                      per_dataset_mask=(not alpha and h.nodata is None
                                        and MaskFlags.per_dataset in flags
                                        and MaskFlags.all_valid not in flags))

    def close(self) -> None:
        for src in self._items.values():
            src.handle.close()
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


# --- reading ------------------------------------------------------------------

def read_piece(pool: DatasetPool, ds: Dataset, grid: Grid, bands: tuple[int, ...],
               resampling: str = "nearest", times: ReadTimes | None = None) -> Piece | None:
    """Read what ``ds`` has of ``grid``; None where it has nothing there."""
    times = times if times is not None else ReadTimes()
    t0 = time.perf_counter()
    level = choose_overview(ds, grid.res, resampling)
    src = pool.get(ds, level)
    times.read += time.perf_counter() - t0
    for b in bands:
        if not 1 <= b <= src.bands:
            raise RenderError(f"dataset {ds.path} has {src.bands} bands, no band {b}")
    try:
        t = src.handle.transform
        kind = crs_kind(ds.crs)
        if resampling == "nearest" and kind != "other" and t.b == 0 and t.d == 0 \
                and t.a > 0 and t.e < 0:
            times.fast += 1
            return _read_separable(src, grid, bands, kind, times)
        times.warped += 1
        return _read_warped(src, ds, grid, bands, resampling, times)
    except RenderError:
        raise
    except Exception as e:  # GDAL read errors: a corrupt or truncated file
        raise RenderError(f"cannot read dataset {ds.path}: {' '.join(str(e).split())}") from None


def _covered(idx: np.ndarray, size: int) -> tuple[int, int] | None:
    """The run of output positions whose (monotonic) source index is inside 0..size-1."""
    inside = np.flatnonzero((idx >= 0) & (idx < size))
    if not len(inside):
        return None
    return int(inside[0]), int(inside[-1]) + 1


@dataclass(frozen=True)
class Lookup:
    """The separable mapping of a grid onto a source: which output rows and
    columns it covers (``j0:j1``, ``i0:i1``), the source row and column of
    each, and the source window they span (``r0:r1``, ``c0:c1``)."""

    j0: int
    j1: int
    i0: int
    i1: int
    rows: np.ndarray
    cols: np.ndarray

    @property
    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (int(self.rows[0]), int(self.rows[-1]) + 1), (int(self.cols[0]), int(self.cols[-1]) + 1)


def separable_lookup(transform: Any, width: int, height: int, grid: Grid, kind: str) -> Lookup | None:
    """Nearest-neighbour source indexes of a grid's pixel centres (EPSG:4326 or 3857 source)."""
    t = transform
    xs, ys = (grid.lon_centers, grid.lat_centers) if kind == "4326" else (grid.x_centers, grid.y_centers)
    cols = np.floor((xs - t.c) / t.a + EPSILON).astype(np.int64)
    rows = np.floor((ys - t.f) / t.e + EPSILON).astype(np.int64)
    cspan, rspan = _covered(cols, width), _covered(rows, height)
    if cspan is None or rspan is None:
        return None
    (i0, i1), (j0, j1) = cspan, rspan
    return Lookup(j0, j1, i0, i1, rows[j0:j1], cols[i0:i1])


def _read_separable(src: Source, grid: Grid, bands: tuple[int, ...], kind: str,
                    times: ReadTimes) -> Piece | None:
    h = src.handle
    lk = separable_lookup(h.transform, h.width, h.height, grid, kind)
    if lk is None:
        return None
    i0, i1, j0, j1, cols, rows = lk.i0, lk.i1, lk.j0, lk.j1, lk.cols, lk.rows
    (r0, r1), (c0, c1) = lk.window
    t0 = time.perf_counter()
    values, valid = _read_window(src, bands, (r0, r1), (c0, c1))
    t1 = time.perf_counter()
    times.read += t1 - t0
    if not (c1 - c0 == i1 - i0 and r1 - r0 == j1 - j0):
        cols, rows = cols - c0, rows - r0
        # gather along the axis that shrinks the array first
        if len(rows) * (c1 - c0) <= (r1 - r0) * len(cols):
            values, valid = values.take(rows, 0).take(cols, 1), valid.take(rows, 0).take(cols, 1)
        else:
            values, valid = values.take(cols, 1).take(rows, 0), valid.take(cols, 1).take(rows, 0)
    times.warp += time.perf_counter() - t1
    return Piece(slice(j0, j1), slice(i0, i1), values, valid)


def _read_window(src: Source, bands: tuple[int, ...], rows: tuple[int, int],
                 cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode a source window as (h, w, bands) values and an (h, w) validity mask."""
    h = src.handle
    height, width = rows[1] - rows[0], cols[1] - cols[0]
    window = (rows, cols)
    indexes = list(bands) + ([src.alpha] if src.alpha and src.alpha not in bands else [])
    buf = np.empty((height, width, len(indexes)), dtype=src.dtype)
    # GDAL writes pixel-interleaved straight into buf through the band-first view
    h.read(indexes, window=window, out=buf.transpose(2, 0, 1))
    if src.alpha:
        valid = buf[:, :, indexes.index(src.alpha)] > 0
        values = buf if src.alpha in bands else buf[:, :, :len(bands)]
    else:
        values = buf
        valid = _valid_of(values, src.nodata)
        if valid is None:
            if src.per_dataset_mask:
                valid = h.read_masks(1, window=window) > 0
            else:
                valid = np.ones((height, width), dtype=bool)
    return values, valid


def _valid_of(values: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Where a pixel has data by its nodata value (any band not nodata); None without one."""
    if nodata is None:
        if values.dtype.kind == "f":
            ok = ~np.isnan(values)
            return ok[:, :, 0] if ok.shape[2] == 1 else ok.any(axis=2)
        return None
    if math.isnan(nodata):
        ok = ~np.isnan(values)
    else:
        ok = values != values.dtype.type(nodata)
        if values.dtype.kind == "f":
            ok &= ~np.isnan(values)
    return ok[:, :, 0] if ok.shape[2] == 1 else ok.any(axis=2)


def _read_warped(src: Source, ds: Dataset, grid: Grid, bands: tuple[int, ...], resampling: str,
                 times: ReadTimes) -> Piece | None:
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    t0 = time.perf_counter()
    span = _warped_span(ds, grid, transform_bounds)
    if span is None:
        return None
    (j0, j1), (i0, i1) = span
    height, width = j1 - j0, i1 - i0
    opts: dict[str, Any] = dict(crs="EPSG:3857", transform=grid.transform(i0, j0), width=width,
                                height=height, resampling=Resampling[resampling])
    if src.alpha:
        opts.update(src_alpha=src.alpha)
    elif src.nodata is not None:
        opts.update(src_nodata=src.nodata, nodata=src.nodata)
    else:
        opts.update(add_alpha=True, src_nodata=None, nodata=None)
    with WarpedVRT(src.handle, **opts) as vrt:
        alpha = src.alpha if src.alpha else (vrt.count if src.nodata is None else 0)
        indexes = list(bands) + ([alpha] if alpha and alpha not in bands else [])
        buf = np.empty((height, width, len(indexes)), dtype=src.dtype)
        vrt.read(indexes, out=buf.transpose(2, 0, 1))
    if alpha:
        valid = buf[:, :, indexes.index(alpha)] > 0
        values = buf if alpha in bands else buf[:, :, :len(bands)]
    else:
        values = buf
        valid = _valid_of(values, src.nodata)
    times.warp += time.perf_counter() - t0
    if valid is None:
        valid = np.ones((height, width), dtype=bool)
    return Piece(slice(j0, j1), slice(i0, i1), values, valid, warped=True)


def _warped_span(ds: Dataset, grid: Grid, transform_bounds: Any
                 ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Rows and columns of the grid that the dataset's bounds may cover (one pixel of slack)."""
    try:
        left, bottom, right, top = transform_bounds(ds.crs, "EPSG:3857", *ds.bounds, densify_pts=21)
    except Exception:
        left, bottom, right, top = -MERC_HALF, -MERC_HALF, MERC_HALF, MERC_HALF
    i0 = max(0, math.floor((left - grid.left) / grid.res) - 1)
    i1 = min(grid.width, math.ceil((right - grid.left) / grid.res) + 1)
    j0 = max(0, math.floor((grid.top - top) / grid.res) - 1)
    j1 = min(grid.height, math.ceil((grid.top - bottom) / grid.res) + 1)
    if i0 >= i1 or j0 >= j1:
        return None
    return (j0, j1), (i0, i1)


__all__ = ["DatasetPool", "gdal_env", "Grid", "Lookup", "Piece", "ReadTimes", "Source", "choose_overview",
           "crs_kind", "native_merc_res", "overview_factors", "read_piece",
           "separable_lookup"]
