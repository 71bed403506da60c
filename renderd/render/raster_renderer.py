"""The raster renderer (``kind = "raster"``): a context manager that opens its
datasets after fork and renders metatiles from the catalog's datasets.

Per metatile:

1. ``find(bbox_wgs84, keys)`` names the datasets meeting it (the catalog's
   spatial index: no file is opened to decide), in the catalog's order.
2. One read per dataset (``raster_read``): at the overview matching the
   metatile's pixel size, through the separable fast path for EPSG:4326
   and EPSG:3857 sources with nearest resampling, else GDAL's warper.
   ``first`` and ``last`` stop reading once every pixel has a value.
3. The pieces are mosaicked (``raster_style.Mosaic``) into the metatile's
   unstyled values and validity mask.
4. Each tile's values and mask are hashed (xxh3-128; invalid pixels
   zeroed first, so what lies under the mask does not count); a tile with
   no valid pixel gets one fixed digest, found before any styling.
5. Only distinct digests are styled (band math, rescale, colormap) and
   encoded with Pillow (``raster_encode``), through the same per-metatile
   and per-process deduplication as Mapnik tiles (``tiles.encode_distinct``).

Rescale ranges from the catalog (percentiles ``pN``, or min and max when
nothing is set for a non-uint8 layer) come from every dataset the layer
selects (``find`` over the whole world), not only those meeting the
metatile, so neighbouring metatiles are stretched alike; they are kept for
``stats_ttl`` seconds, and dropped sooner when a dataset newer than them
shows up.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import xxhash

from ..catalog.model import Dataset
from ..config import LayerConfig
from ..errors import RenderdError, RenderError, StyleError
from ..tilemath import Meta, meta_lnglat_bounds
from .expression import Expression, ExpressionError, parse_expression
from .raster_encode import TileFormat, empty, encode
from .raster_read import DatasetPool, Grid, ReadTimes, gdal_env, read_piece
from .raster_style import (Mosaic, Range, Style, band_range, colormap_lut, expression_range,
                           parse_rescale, style_key)
from .tiles import MEMO, EncodeMemo, MetatileResult, encode_distinct

Bounds = tuple[float, float, float, float]
Find = Callable[[Bounds, "dict[str, str] | None"], Sequence[Dataset]]

WORLD: Bounds = (-180.0, -90.0, 180.0, 90.0)
#: the digest of a tile with no valid pixel (xxh3 digests of data never are all zero in practice)
EMPTY_DIGEST = b"\0" * 16


class RasterRenderer:
    """Renders metatiles of one ``kind = "raster"`` layer.

    ``find(bbox_wgs84, keys)`` gives the datasets meeting a box (see
    ``renderd.render.catalog_finder`` for the catalog's). Use as a context
    manager in the process that renders (after fork)::

        with RasterRenderer(layer, find=find) as r:
            result = r.render(meta, {"date": "2024-06"})
    """

    kind = "raster"

    def __init__(self, layer: LayerConfig, find: Find | None = None,
                 memo: EncodeMemo | None = MEMO, pool_size: int = 64, stats_ttl: float = 60.0):
        if layer.kind != "raster":
            raise StyleError(f"layer {layer.name} is not a raster layer")
        if find is None:
            raise StyleError(f"layer {layer.name}: no catalog to find datasets in")
        self.layer = layer
        self.find = find
        self.memo = memo
        self.pool_size = pool_size
        self.stats_ttl = stats_ttl
        self.format = TileFormat.parse(layer.format)
        #: the encode memo's name for this layer's tiles: the digests carry the style, and
        #: a tile without data is the same blob in every layer of a format
        self.memo_key = f"raster:{layer.format}"
        try:
            self.expression: Expression | None = (parse_expression(layer.expression)
                                                  if layer.expression else None)
        except ExpressionError as e:
            raise StyleError(f"layer {layer.name}: {e}") from None
        self.rescale = parse_rescale(layer.rescale)
        self.lut: np.ndarray | None = None
        self.pool: DatasetPool | None = None
        self.data_time: float | None = None
        self.last_times = ReadTimes()
        self._styles: dict[tuple, tuple[float, float, Style]] = {}

    # --- life cycle --------------------------------------------------------
    def __enter__(self) -> "RasterRenderer":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Set up GDAL and the dataset pool (idempotent); opens the catalog if it can be."""
        if self.pool is not None:
            return
        if self.layer.colormap:
            try:
                self.lut = colormap_lut(self.layer.colormap)
            except RenderError as e:
                raise StyleError(f"layer {self.layer.name}: {e}") from None
        gdal_env()
        self.pool = DatasetPool(self.pool_size)
        opener = getattr(self.find, "open", None)
        if opener is not None:
            opener()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        closer = getattr(self.find, "close", None)
        if closer is not None:
            closer()

    # --- rendering -----------------------------------------------------------
    def check_keys(self, keys: dict[str, str] | None) -> dict[str, str] | None:
        """The layer's keys, all present and no others; None for a layer without keys."""
        if not self.layer.keys:
            if keys:
                raise RenderError(f"layer {self.layer.name} has no keys, got {sorted(keys)}")
            return None
        if not keys or set(keys) != set(self.layer.keys):
            raise RenderError(f"layer {self.layer.name} needs the keys "
                              f"{', '.join(self.layer.keys)}, got {', '.join(sorted(keys or {})) or 'none'}")
        return {k: keys[k] for k in self.layer.keys}

    def render(self, meta: Meta, keys: dict[str, str] | None = None) -> MetatileResult:
        """Read, mosaic, hash, style and encode the metatile's tiles."""
        if self.pool is None:
            self.open()
        assert self.pool is not None
        keys = self.check_keys(keys)
        ts = self.layer.tile_size
        t0 = time.perf_counter()
        grid = Grid.of(meta, ts)
        datasets = self._find(tuple(meta_lnglat_bounds(meta)), keys)
        if self.layer.mosaic == "last":
            datasets.reverse()
        times = ReadTimes()
        style = self.style(keys, datasets)
        values, valid = self._mosaic(grid, datasets, times)
        t_mosaic = time.perf_counter()
        self.data_time = max((ds.ingested for ds in datasets), default=None)
        self.last_times = times
        digests = value_digests(values, valid, meta, ts, style.key.encode())
        t_hash = time.perf_counter()
        style_seconds = [0.0]

        def encode_one(i: int) -> bytes:
            if digests[i] == EMPTY_DIGEST:
                return empty(ts, self.format)
            x, y = (i // meta.n) * ts, (i % meta.n) * ts
            s0 = time.perf_counter()
            styled = style.apply(values[y:y + ts, x:x + ts], valid[y:y + ts, x:x + ts])
            style_seconds[0] += time.perf_counter() - s0
            return encode(styled, self.format)

        draw = t_mosaic - t0
        result = encode_distinct(meta, digests, encode_one, self.memo_key, ts, memo=self.memo,
                                 draw_seconds=draw, started=t_mosaic)
        result.phases = {
            "read": times.read, "warp": times.warp,
            "mosaic": max(draw - times.read - times.warp, 0.0),
            "hash": t_hash - t_mosaic, "style": style_seconds[0],
            "encode": max(result.encode_seconds - (t_hash - t_mosaic) - style_seconds[0], 0.0),
        }
        return result

    def _find(self, bbox: Bounds, keys: dict[str, str] | None) -> list[Dataset]:
        try:
            return list(self.find(bbox, keys))
        except RenderdError as e:   # the catalog's errors: a database gone, a bad row
            raise RenderError(f"layer {self.layer.name}: catalog: {e}") from None

    def _bands(self, datasets: Sequence[Dataset]) -> tuple[int, ...]:
        if self.expression is not None:
            return self.expression.bands
        if self.layer.bands:
            return self.layer.bands
        count = datasets[0].bands if datasets else 1
        return (1, 2, 3) if count >= 3 else (1,)

    def _mosaic(self, grid: Grid, datasets: Sequence[Dataset], times: ReadTimes
                ) -> tuple[np.ndarray, np.ndarray]:
        assert self.pool is not None
        bands = self._bands(datasets)
        dtype = np.result_type(*[np.dtype(ds.dtype) for ds in datasets]) if datasets else np.uint8
        mosaic = Mosaic(self.layer.mosaic, grid, len(bands), dtype)
        for ds in datasets:
            piece = read_piece(self.pool, ds, grid, bands, self.layer.resampling, times)
            if piece is not None:
                mosaic.add(piece)
                if mosaic.complete:
                    break
        return mosaic.result()

    # --- style -------------------------------------------------------------------
    def style(self, keys: dict[str, str] | None, datasets: Sequence[Dataset]) -> Style:
        """The layer's style for these keys, with its rescale ranges resolved."""
        if not datasets:  # nothing to style: every tile is the empty one
            return Style(None, None, None, False, style_key(self.layer.name, self.layer.format,
                                                            self.layer.tile_size, ("empty",)))
        cache_key = (tuple(sorted((keys or {}).items())), tuple(sorted({ds.dtype for ds in datasets})),
                     datasets[0].bands)
        now = time.monotonic()
        newest = max(ds.ingested for ds in datasets)
        hit = self._styles.get(cache_key)
        if hit is not None and now - hit[0] < self.stats_ttl and newest <= hit[1]:
            return hit[2]
        style, seen = self._build_style(keys, datasets)
        self._styles[cache_key] = (now, max(seen, newest), style)
        return style

    def _build_style(self, keys: dict[str, str] | None, datasets: Sequence[Dataset]
                     ) -> tuple[Style, float]:
        layer = self.layer
        dtypes = {ds.dtype for ds in datasets}
        dtype = np.dtype(np.result_type(*[np.dtype(d) for d in dtypes])) if dtypes else np.dtype(np.uint8)
        bands = self._bands(datasets)
        needs_stats = bool(self.rescale) and any(p.startswith("p") for pair in self.rescale
                                                  for p in pair)
        needs_stats |= not self.rescale and (dtype != np.uint8 or self.expression is not None)
        selection: Sequence[Dataset] = self._find(WORLD, keys) if needs_stats else datasets
        ranges: list[Range] | None = None
        try:
            if self.expression is not None:
                pair = self.rescale[0] if self.rescale else None
                if pair is not None and not any(p.startswith("p") for p in pair):
                    ranges = [(float(pair[0]), float(pair[1]))]
                else:
                    inputs = {b: band_range(selection, b, dtype, pair) for b in bands}
                    ranges = [expression_range(self.expression, inputs)]
            elif self.rescale or dtype != np.uint8:
                pairs = self.rescale or [None]  # type: ignore[list-item]
                ranges = [band_range(selection, b, dtype, pairs[i if len(pairs) > 1 else 0])
                          for i, b in enumerate(bands)]
        except RenderError as e:
            raise RenderError(f"layer {layer.name}: {e}") from None
        key = style_key(layer.name, layer.format, layer.tile_size,
                        (bands, layer.expression, ranges, layer.colormap, str(dtype)))
        style = Style(ranges=ranges, expression=self.expression, lut=self.lut,
                      alpha_band=len(bands) == 4, key=key)
        return style, max((ds.ingested for ds in selection), default=0.0)


def value_digests(values: np.ndarray, valid: np.ndarray, meta: Meta, ts: int,
                  style: bytes = b"") -> list[bytes]:
    """xxh3-128 of ``style`` and each tile's unstyled values and mask, x-major;
    ``EMPTY_DIGEST`` for a tile without data (whatever the style).

    Invalid pixels are zeroed in a copy before hashing, so two tiles that
    show the same thing hash alike whatever their nodata pixels hold.
    """
    n = meta.n
    if valid.all():
        counts = np.full((n, n), ts * ts)
    else:
        counts = valid.reshape(n, ts, n, ts).sum(axis=(1, 3))
    full = ts * ts
    out = []
    for dx in range(n):
        xs = slice(dx * ts, (dx + 1) * ts)
        for dy in range(n):
            c = counts[dy, dx]
            if c == 0:
                out.append(EMPTY_DIGEST)
                continue
            ys = slice(dy * ts, (dy + 1) * ts)
            h = xxhash.xxh3_128(style)
            if c == full:
                h.update(np.ascontiguousarray(values[ys, xs]))
                h.update(b"\1")
            else:
                m = np.ascontiguousarray(valid[ys, xs])
                tv = values[ys, xs].copy()
                tv[~m] = 0
                h.update(tv)
                h.update(m)
            out.append(h.digest())
    return out


__all__ = ["EMPTY_DIGEST", "Find", "RasterRenderer", "value_digests"]
