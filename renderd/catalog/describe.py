"""What ``ingest`` learns from one raster file: a ``Dataset``.

``open_raster`` opens a file or says in one line why it cannot be a
dataset (no raster, a corrupt TIFF, no CRS, no georeference, no bands);
``describe`` reads the header, the bounds (native, and WGS84 densified
along the edges), the statistics (``stats.compute_stats``; from an
overview when the raster has more than ``max_pixels`` pixels and
overviews), the footprint and the valid share.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import IngestError
from .footprint import MaskGrid, footprint, outline
from .model import Bounds, Dataset
from .stats import DEFAULT_MAX_BYTES, compute_stats

#: above this many pixels, statistics come from the largest overview below it
DEFAULT_MAX_PIXELS = 1 << 28
#: a tag value longer than this is left out of the metadata
MAX_TAG = 4096
#: GDAL's block cache (MB) while a file is described, unless $GDAL_CACHEMAX
#: says otherwise: its default (5% of RAM) would keep most of a large
#: raster's blocks between the two passes, with no gain in speed
CACHE_MB = 64


def _gdal_message(e: BaseException) -> str:
    """One line of what GDAL said: rasterio chains GDAL's own error as the
    cause of a generic one ("Read failed. See previous exception...")."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


@contextmanager
def pixel_errors(path: str) -> Iterator[None]:
    """A GDAL failure reading the pixels of ``path`` as one ``IngestError``."""
    from rasterio.errors import RasterioError
    try:
        yield
    except RasterioError as e:
        raise IngestError(f"{path}: cannot read its pixels ({_gdal_message(e)})") from None


@contextmanager
def open_raster(path: str, **options: Any) -> Iterator[Any]:
    """The rasterio dataset of ``path``; ``IngestError`` if it is no
    georeferenced raster with bands of real numbers."""
    import warnings

    from ..rasterenv import import_rasterio
    rasterio = import_rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path, **options)
    except RasterioError as e:
        raise IngestError(f"{path}: not a raster GDAL can read ({_gdal_message(e)})") from None
    try:
        check_raster(src, path)
        yield src
    finally:
        src.close()


def check_raster(src: Any, path: str) -> None:
    if src.count == 0:
        more = " (it has subdatasets: convert them first)" if src.subdatasets else ""
        raise IngestError(f"{path}: has no bands{more}")
    if any(np.dtype(d).kind == "c" for d in src.dtypes):
        raise IngestError(f"{path}: complex pixels are not supported")
    if src.crs is None:
        raise IngestError(f"{path}: has no CRS")
    if src.transform.is_identity:
        raise IngestError(f"{path}: has no geotransform (ground control points or none)")


def crs_text(crs: Any) -> str:
    """An authority code (``EPSG:32633``) where the CRS has one, else its WKT."""
    try:
        auth = crs.to_authority()
    except Exception:  # pyproj could not match it
        auth = None
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def native_bounds(src: Any) -> Bounds:
    """Bounds of the four corners (any rotation or orientation)."""
    xs, ys = zip(*outline(src.transform, src.width, src.height).exterior.coords[:4])
    return (min(xs), min(ys), max(xs), max(ys))


def wgs84_bounds(src: Any, bounds: Bounds, path: str) -> Bounds:
    """Longitude/latitude bounds; west > east for a raster across the
    antimeridian; longitudes of a 0..360 source brought into -180..180."""
    from rasterio.warp import transform_bounds
    try:
        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *bounds, densify_pts=21)
    except Exception as ex:  # PROJ cannot transform it
        raise IngestError(f"{path}: its bounds cannot be transformed to WGS84 ({_gdal_message(ex)})") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise IngestError(f"{path}: its bounds have no place in WGS84")
    s, n = max(-90.0, s), min(90.0, n)
    if w <= e and (e - w >= 360 - 1e-9):
        return (-180.0, s, 180.0, n)
    if w <= e:
        if w >= 180:            # wholly east of 180 (a 0..360 source): shift back
            w, e = w - 360, e - 360
        elif e > 180:           # across 180: west > east
            e -= 360
        elif e <= -180:
            w, e = w + 360, e + 360
        elif w < -180:
            w += 360
    return (w, s, e, n)


def metadata(src: Any) -> dict[str, Any]:
    """The free metadata: tags, band descriptions, colour interpretation,
    units, scales and offsets, compression."""
    tags = {k: v for k, v in src.tags().items() if len(v) <= MAX_TAG}
    return {"tags": tags, "descriptions": list(src.descriptions),
            "colorinterp": [c.name for c in src.colorinterp], "units": list(src.units),
            "scales": list(src.scales), "offsets": list(src.offsets), "driver": src.driver,
            "compression": src.compression.value if src.compression else None}


def _stats_source(src: Any, max_pixels: int) -> int | None:
    """The overview level (0 = the first) to take statistics from, or None
    for the full resolution."""
    if src.width * src.height <= max_pixels:
        return None
    for level, f in enumerate(src.overviews(1)):
        if math.ceil(src.width / f) * math.ceil(src.height / f) <= max_pixels:
            return level
    return None


def describe(path: str, collection: str, keys: dict[str, str], stats: bool = True,
             max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
             on_window: Callable[[Any], None] | None = None,
             now: Callable[[], float] = time.time) -> Dataset:
    """The ``Dataset`` of the raster at ``path`` (made absolute)."""
    from ..rasterenv import import_rasterio
    rasterio = import_rasterio()

    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise IngestError(f"{path}: {e.strerror}") from None
    env = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": CACHE_MB << 20}  # bytes
    with rasterio.Env(**env), open_raster(path) as src:
        bounds = native_bounds(src)
        wgs84 = wgs84_bounds(src, bounds, path)
        meta = metadata(src)
        header = dict(crs=crs_text(src.crs), transform=tuple(src.transform)[:6], width=src.width,
                      height=src.height, bands=src.count, dtype=src.dtypes[0], nodata=src.nodata,
                      block=tuple(src.block_shapes[0]), overviews=tuple(src.overviews(1)))
        with pixel_errors(path):
            if stats:
                level = _stats_source(src, max_pixels)
                band_stats, share, grid, gsrc = _statistics(path, src, level, max_bytes, on_window)
                meta["ingest"] = {"stats": "full resolution" if level is None else
                                  f"overview 1/{src.overviews(1)[level]}",
                                  "footprint": "every pixel"}
            else:
                band_stats, gsrc = (), src
                grid = MaskGrid.decimated(src)
                share = grid.share
                meta["ingest"] = {"stats": "none", "footprint": "decimated mask"}
            foot = footprint(gsrc, grid, src.crs)
    return Dataset(collection=collection, keys=dict(keys), path=path, size=st.st_size,
                   mtime=st.st_mtime, bounds=bounds, wgs84_bounds=wgs84, footprint=foot,
                   valid_share=share, stats=band_stats, metadata=meta, ingested=now(), **header)


def _statistics(path: str, src: Any, level: int | None, max_bytes: int,
                on_window: Callable[[Any], None] | None) -> tuple[tuple, float, MaskGrid, Any]:
    if level is None:
        return _stats_of(src, max_bytes, on_window) + (src,)
    with open_raster(path, overview_level=level) as ov:
        got = _stats_of(ov, max_bytes, on_window)
        # the footprint's transform comes from ``ov``: make it before closing
        return got[0], got[1], got[2], _Frozen(ov)


def _stats_of(src: Any, max_bytes: int, on_window: Callable[[Any], None] | None) -> tuple[tuple, float, MaskGrid]:
    grid = MaskGrid(src.width, src.height)
    res = compute_stats(src, max_bytes, on_window=on_window, on_valid=grid.add)
    return res.stats, (res.valid / res.total if res.total else 0.0), grid


class _Frozen:
    """The geometry of a dataset that was closed (what ``footprint`` reads)."""

    def __init__(self, src: Any):
        self.transform, self.width, self.height = src.transform, src.width, src.height
