"""What the catalog holds about one raster dataset: its header and statistics.

``Dataset`` is what ``renderd-py ingest`` writes, ``renderd-py datasets``
lists, the raster renderer reads instead of opening files to decide what
meets a metatile, and ``/metadata/...`` serves. Both catalog backends
(SQLite, PostgreSQL) store exactly these fields.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

Bounds = tuple[float, float, float, float]   # west/left, south/bottom, east/right, north/top


@dataclass(frozen=True)
class BandStats:
    """One band's statistics over its valid pixels (not nodata, not masked).

    ``histogram`` holds ``counts`` of ``len(counts)`` equal bins between
    ``min`` and ``max``; ``percentiles`` maps 1..99 to values. ``percentile(p)``
    answers any p from 0 to 100, interpolating in the histogram between the
    whole percentiles.
    """

    min: float
    max: float
    mean: float
    stdev: float
    count: int                                  # valid pixels
    percentiles: dict[int, float] = field(default_factory=dict)
    counts: tuple[int, ...] = ()                # the histogram's bins

    def percentile(self, p: float) -> float:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is outside 0..100")
        if p == int(p) and int(p) in self.percentiles:
            return self.percentiles[int(p)]
        if p <= 0 or not self.count:
            return self.min
        if p >= 100:
            return self.max
        if self.counts:
            want = p / 100 * sum(self.counts)
            cum, acc = [], 0
            for c in self.counts:
                acc += c
                cum.append(acc)
            i = bisect.bisect_left(cum, want)
            before = cum[i - 1] if i else 0
            inside = (want - before) / self.counts[i] if self.counts[i] else 0.0
            width = (self.max - self.min) / len(self.counts)
            return self.min + (i + inside) * width
        lo = max((k for k in self.percentiles if k <= p), default=None)
        hi = min((k for k in self.percentiles if k >= p), default=None)
        if lo is None or hi is None:
            return self.min if lo is None else self.max
        if lo == hi:
            return self.percentiles[lo]
        a, b = self.percentiles[lo], self.percentiles[hi]
        return a + (b - a) * (p - lo) / (hi - lo)

    def to_json(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max, "mean": self.mean, "stdev": self.stdev,
                "count": self.count, "percentiles": {str(k): v for k, v in self.percentiles.items()},
                "histogram": list(self.counts)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "BandStats":
        return cls(min=float(d["min"]), max=float(d["max"]), mean=float(d["mean"]),
                   stdev=float(d["stdev"]), count=int(d["count"]),
                   percentiles={int(k): float(v) for k, v in d.get("percentiles", {}).items()},
                   counts=tuple(int(c) for c in d.get("histogram", ())))


@dataclass(frozen=True)
class Dataset:
    """One raster file in a collection.

    ``crs`` is an authority code (``EPSG:32633``) where the file's CRS has
    one, else its WKT. ``transform`` is the affine geotransform as rasterio
    orders it (a, b, c, d, e, f). ``block`` is (rows, columns) of an
    internal block, as rasterio's ``block_shapes[0]``. ``overviews`` are the
    decimation factors of the internal overviews (``[2, 4, 8]``). A valid
    pixel is one its band's mask keeps and that is finite (NaN never is);
    ``stats`` count only those, and ``valid_share`` is the share of pixels
    where any band is valid. ``bounds`` are in the file's CRS,
    ``wgs84_bounds`` in longitude/latitude (west > east across the
    antimeridian); ``footprint`` is the outline of the valid pixels as a
    GeoJSON geometry in longitude/latitude, holding every valid pixel (None
    when none is).
    ``ingested`` (unix seconds) is the data time of the metatiles it feeds.
    """

    collection: str
    keys: dict[str, str]
    path: str
    size: int
    mtime: float
    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    bands: int
    dtype: str
    nodata: float | None
    block: tuple[int, int]
    overviews: tuple[int, ...]
    bounds: Bounds
    wgs84_bounds: Bounds
    footprint: dict[str, Any] | None
    valid_share: float
    stats: tuple[BandStats, ...]
    metadata: dict[str, Any]
    ingested: float
    id: int | None = None

    def band_stats(self, band: int) -> BandStats:
        """Statistics of band ``band`` (from 1)."""
        if not 1 <= band <= len(self.stats):
            raise IndexError(f"{self.path} has no statistics for band {band}")
        return self.stats[band - 1]
