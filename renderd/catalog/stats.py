"""Per-band statistics over valid pixels, read in bounded windows.

Valid pixels are those the band's mask keeps (nodata, an internal mask or
an alpha band excluded) that are also finite. Two passes over windows of
whole blocks, each window at most ``max_bytes`` of pixels and working
memory, so a raster of any size takes the same memory:

1. count, min, max, and mean and sum of squared deviations (combined
   window by window with Chan's formulas, in float64): mean and stdev are
   those of numpy over all valid pixels, up to float64 rounding; stdev is
   the population one (ddof 0).
2. a fine histogram between min and max: one bin per value for integer
   bands whose range has at most ``FINE_BINS`` values (percentiles then
   exact), else ``FINE_BINS`` equal bins (percentiles within a bin,
   ``(max - min) / FINE_BINS``). Percentiles 1..99 follow numpy's default
   (linear) definition; the stored histogram has ``HIST_BINS`` bins.

A raster that fits in one window is read once. Pass 1 also hands each
window's "any band valid" mask to ``on_valid`` (the footprint uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from .model import BandStats

#: bins of the histogram kept in the catalog
HIST_BINS = 256
#: bins of the histogram percentiles are taken from (a multiple of HIST_BINS)
FINE_BINS = 65536
#: bytes of pixels and working memory one window may take
DEFAULT_MAX_BYTES = 64 << 20
#: working bytes per pixel besides the pixels: float64 copy, masks, bin indexes
WORK_BYTES = 24


def chunk_shape(width: int, height: int, block: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(rows, columns) of the windows: whole blocks (``block`` is rows,
    columns), whole rows of blocks where they fit, never more than
    ``max_pixels`` unless a single row of pixels is wider."""
    max_pixels = max(1, max_pixels)
    brows, bcols = max(1, min(block[0], height)), max(1, min(block[1], width))
    if brows * bcols >= max_pixels:  # one block fills the budget: part of a block
        rows = max(1, min(brows, max_pixels // bcols))
        return rows, max(1, min(bcols, max_pixels // rows))
    across = min(-(-width // bcols), max_pixels // (brows * bcols))
    cols = min(width, across * bcols)
    if cols < width:
        return brows, cols
    return min(height, max(1, max_pixels // (brows * width)) * brows), width


def chunk_windows(width: int, height: int, block: tuple[int, int], max_pixels: int) -> list[Window]:
    """The windows covering the raster once, row by row (see ``chunk_shape``)."""
    rows, cols = chunk_shape(width, height, block, max_pixels)
    return [Window(c, r, min(cols, width - c), min(rows, height - r))
            for r in range(0, height, rows) for c in range(0, width, cols)]


@dataclass
class _Band:
    """Running figures of one band."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    exact: bool = False            # one fine bin per integer value
    fine: np.ndarray | None = None

    def add(self, v: np.ndarray) -> None:
        """Pass 1: fold in the valid values ``v`` of one window."""
        if not v.size:
            return
        n = int(v.size)
        mean = float(v.mean(dtype=np.float64))
        d = v.astype(np.float64) - mean
        m2 = float(np.dot(d, d))
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))

    def start_histogram(self, integer: bool) -> None:
        self.exact = integer and self.n > 0 and self.hi - self.lo < FINE_BINS
        size = int(self.hi - self.lo) + 1 if self.exact else FINE_BINS
        self.fine = np.zeros(size, dtype=np.int64)

    def bin(self, v: np.ndarray) -> None:
        """Pass 2: count the valid values ``v`` of one window."""
        if not v.size:
            return
        if self.exact:
            idx = v.astype(np.int64) - int(self.lo)
        elif self.hi > self.lo:
            idx = ((v.astype(np.float64) - self.lo) * (FINE_BINS / (self.hi - self.lo))).astype(np.int64)
            np.clip(idx, 0, FINE_BINS - 1, out=idx)
        else:
            idx = np.zeros(v.size, dtype=np.int64)
        self.fine += np.bincount(idx, minlength=self.fine.size)

    def value_at(self, cum: np.ndarray, rank: int) -> float:
        """The value of the ``rank``-th (from 0) valid value in sorted order."""
        b = int(np.searchsorted(cum, rank, side="right"))
        if self.exact:
            return self.lo + b
        width = (self.hi - self.lo) / FINE_BINS
        before = int(cum[b - 1]) if b else 0
        inside = (rank - before + 0.5) / int(self.fine[b])
        return min(self.hi, max(self.lo, self.lo + (b + inside) * width))

    def result(self) -> BandStats:
        if not self.n:
            nan = float("nan")
            return BandStats(min=nan, max=nan, mean=nan, stdev=nan, count=0)
        cum = np.cumsum(self.fine)
        pct = {}
        for p in range(1, 100):
            pos = p / 100 * (self.n - 1)
            a, b = math.floor(pos), math.ceil(pos)
            va = self.value_at(cum, a)
            vb = va if b == a else self.value_at(cum, b)
            pct[p] = va + (vb - va) * (pos - a)
        return BandStats(min=self.lo, max=self.hi, mean=self.mean, stdev=math.sqrt(self.m2 / self.n),
                         count=self.n, percentiles=pct, counts=tuple(int(c) for c in self._coarse()))

    def _coarse(self) -> np.ndarray:
        if not self.exact:
            return self.fine.reshape(HIST_BINS, -1).sum(axis=1)
        values = np.arange(self.fine.size)
        span = self.hi - self.lo
        bins = np.zeros(values.size, dtype=np.int64) if span == 0 else \
            np.minimum((values * HIST_BINS / span).astype(np.int64), HIST_BINS - 1)
        return np.bincount(bins, weights=self.fine, minlength=HIST_BINS).astype(np.int64)


@dataclass
class StatsResult:
    stats: tuple[BandStats, ...]
    valid: int                 # pixels where any band is valid
    total: int
    windows: list[Window] = field(default_factory=list)


def band_masks(src: Any, data: np.ndarray, window: Window) -> list[np.ndarray | None]:
    """Per band, the valid pixels of ``data`` (read at ``window``), or None
    where all are. Nodata is compared here (GDAL's nodata mask would read
    the pixels again); internal masks and alpha come from GDAL."""
    flags = src.mask_flag_enums
    gdal_masks = None
    out: list[np.ndarray | None] = []
    for b in range(data.shape[0]):
        f = flags[b]
        band = data[b]
        if MaskFlags.per_dataset in f or MaskFlags.alpha in f:
            if gdal_masks is None:
                gdal_masks = src.read_masks(window=window)
            m = gdal_masks[b] > 0
        elif MaskFlags.nodata in f:
            nd = src.nodatavals[b]
            m = ~np.isnan(band) if nd is not None and math.isnan(nd) else band != band.dtype.type(nd)
        else:
            m = None
        if band.dtype.kind == "f":
            finite = np.isfinite(band)
            m = finite if m is None else m & finite
        out.append(m)
    return out


def compute_stats(src: Any, max_bytes: int = DEFAULT_MAX_BYTES,
                  on_window: Callable[[Window], None] | None = None,
                  on_valid: Callable[[Window, np.ndarray], None] | None = None) -> StatsResult:
    """Statistics of every band of the open rasterio dataset ``src``.

    ``on_window(window)`` is called for each window read (both passes);
    ``on_valid(window, any_valid)`` once per window of the first pass."""
    bands = src.count
    itemsize = np.dtype(src.dtypes[0]).itemsize
    per_pixel = bands * (itemsize + 1) + WORK_BYTES
    block = src.block_shapes[0] if src.block_shapes else (1, src.width)
    windows = chunk_windows(src.width, src.height, block, max_bytes // per_pixel)
    acc = [_Band() for _ in range(bands)]
    kept: tuple[np.ndarray, list] | None = None
    valid = 0
    used: list[Window] = []

    def read(w: Window) -> tuple[np.ndarray, list[np.ndarray | None]]:
        used.append(w)
        if on_window is not None:
            on_window(w)
        data = src.read(window=w)
        return data, band_masks(src, data, w)

    for w in windows:
        data, masks = read(w)
        any_valid = np.zeros(data.shape[1:], dtype=bool)
        for b in range(bands):
            m = masks[b]
            acc[b].add(data[b].ravel() if m is None else data[b][m])
            any_valid |= True if m is None else m
        valid += int(any_valid.sum())
        if on_valid is not None:
            on_valid(w, any_valid)
        if len(windows) == 1:
            kept = (data, masks)
    integer = np.dtype(src.dtypes[0]).kind in "iub"
    for a in acc:
        a.start_histogram(integer)
    if any(a.n for a in acc):
        for w in windows:
            data, masks = kept if kept is not None else read(w)
            for b in range(bands):
                m = masks[b]
                acc[b].bin(data[b].ravel() if m is None else data[b][m])
    return StatsResult(tuple(a.result() for a in acc), valid, src.width * src.height, used)
