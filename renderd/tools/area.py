"""The area a tool works on: a lon/lat box or GeoJSON polygons.

``Area.metatiles(z, n)`` yields the metatiles whose *interior* meets the
area's interior, tested geometry against metatile, not bounding box
against bounding box: a metatile that only touches the area along an edge
or at a corner is not part of it, so two areas sharing a border do not
both claim the metatiles along it. ``Area.tile_mask(meta)`` tells, tile by
tile, which tiles of a metatile are in the area (coverage and export count
tiles, not metatiles).

Polygon edges are taken as straight lines in longitude/latitude, as GeoJSON
(RFC 7946) says; tile and metatile edges are straight in both lon/lat and
Web Mercator, so the test runs in degrees. Latitudes are clipped to the
Web Mercator limit (+-85.0511).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..errors import UsageError, file_errors_as_usage
from ..tilemath import BBox, Meta, metatile_size, parse_bbox, tile_range

MAX_LAT = 85.0511287798066
#: GeoJSON "crs" names that mean plain lon/lat (the 2008 spec allowed others)
_LONLAT_CRS = {"urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:OGC::CRS84",
               "EPSG:4326", "urn:ogc:def:crs:EPSG::4326", "urn:ogc:def:crs:EPSG:4326"}


def _x_edges(z: int, x0: int, count: int, step: int) -> np.ndarray:
    """Longitudes of the west edges of ``count + 1`` columns from tile ``x0``."""
    xs = np.arange(count + 1, dtype=np.float64) * step + x0
    return xs / (1 << z) * 360.0 - 180.0


def _lat(z: int, y: int) -> float:
    """Latitude of the north edge of tile row ``y`` (mercantile's formula)."""
    return math.degrees(math.atan(math.sinh(math.pi * (1.0 - 2.0 * y / (1 << z)))))


def _lon(z: int, x: int) -> float:
    return x / (1 << z) * 360.0 - 180.0


@dataclass
class Area:
    """A region in degrees: its bounds, geometry and where it came from.

    shapely is imported only where a geometry is needed: a ``--bbox`` area
    that is only walked metatile by metatile never needs one (that is 150 ms
    of a tool's start)."""

    bbox: BBox
    source: str
    is_box: bool = False
    #: shapely Polygon or MultiPolygon, lon/lat, clipped to Web Mercator (a box's: made when asked)
    _geometry: Any = field(default=None, repr=False)
    _prepared: bool = field(default=False, repr=False, compare=False)

    @property
    def geometry(self) -> Any:
        if self._geometry is None:
            from shapely.geometry import box
            self._geometry = box(*self.bbox)
        if not self._prepared:
            import shapely
            shapely.prepare(self._geometry)
            self._prepared = True
        return self._geometry

    # --- construction ----------------------------------------------------
    @classmethod
    def from_bbox(cls, text: str) -> "Area":
        bb = parse_bbox(text)
        return cls(bb, f"bbox {text}", is_box=True)

    @classmethod
    def from_geojson(cls, path: str) -> "Area":
        return cls.from_geojson_text(_read(path), path)

    @classmethod
    def from_geojson_text(cls, text: str, name: str = "GeoJSON") -> "Area":
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise UsageError(f"area {name} is not JSON: {e}") from None
        import shapely
        polys = _polygons(doc, name)
        try:
            geom = shapely.union_all(polys)
        except shapely.errors.GEOSException as e:
            raise UsageError(f"area {name}: cannot combine its polygons: {e}") from None
        geom = geom.intersection(shapely.box(-180.0, -MAX_LAT, 180.0, MAX_LAT))
        if geom.is_empty or geom.area == 0:
            raise UsageError(f"area {name} lies outside the Web Mercator world")
        w, s, e, n = geom.bounds
        return cls(BBox(w, s, e, n), f"area {name}", _geometry=geom)

    @classmethod
    def from_options(cls, bbox: str | None, area: str | None) -> "Area":
        """The area of ``--bbox`` or ``--area``: exactly one must be given."""
        if bool(bbox) == bool(area):
            raise UsageError("give exactly one of --bbox W,S,E,N and --area FILE.geojson")
        return cls.from_bbox(bbox) if bbox else cls.from_geojson(area)  # type: ignore[arg-type]

    # --- queries -----------------------------------------------------------
    def metatiles(self, z: int, meta: int = 8) -> Iterator[Meta]:
        """Metatiles at zoom ``z`` meeting the area, row by row, west to east."""
        n = metatile_size(z, meta)
        xmin, ymin, xmax, ymax = tile_range(self.bbox, z)
        mx0, mx1, my0, my1 = xmin // n, xmax // n, ymin // n, ymax // n
        if self.is_box:
            for my in range(my0, my1 + 1):
                for mx in range(mx0, mx1 + 1):
                    yield Meta(z, mx * n, my * n, n)
            return
        import shapely
        lons = _x_edges(z, mx0 * n, mx1 - mx0 + 1, n)
        for my in range(my0, my1 + 1):
            north, south = _lat(z, my * n), _lat(z, (my + 1) * n)
            # narrow the row to the part of the area inside it, then test boxes
            strip = self.geometry.intersection(shapely.box(-180.0, south, 180.0, north))
            if strip.is_empty or strip.area == 0:
                continue
            sw, _, se, _ = strip.bounds
            lo = max(0, int(np.searchsorted(lons, sw, side="right")) - 1)
            hi = min(len(lons) - 1, int(np.searchsorted(lons, se, side="left")))
            if hi <= lo:
                continue
            w, e = lons[lo:hi], lons[lo + 1:hi + 1]
            boxes = shapely.box(w, south, e, north)
            hit = self._interiors_meet(boxes)
            for i in np.nonzero(hit)[0]:
                yield Meta(z, (mx0 + lo + int(i)) * n, my * n, n)

    def tile_mask(self, m: Meta) -> list[bool]:
        """For each tile of ``m`` in index (x-major) order: is it in the area?"""
        count = m.n * m.n
        if self.is_box:
            xmin, ymin, xmax, ymax = tile_range(self.bbox, m.z)
            return [xmin <= m.x0 + i // m.n <= xmax and ymin <= m.y0 + i % m.n <= ymax
                    for i in range(count)]
        import shapely
        w, s, e, n = _meta_box(m)
        mbox = shapely.box(w, s, e, n)
        if self.geometry.contains(mbox):
            return [True] * count
        lons = _x_edges(m.z, m.x0, m.n, 1)
        lats = np.array([_lat(m.z, m.y0 + j) for j in range(m.n + 1)])
        ix = np.repeat(np.arange(m.n), m.n)  # x-major: x changes slowest
        iy = np.tile(np.arange(m.n), m.n)
        boxes = shapely.box(lons[ix], lats[iy + 1], lons[ix + 1], lats[iy])
        return [bool(v) for v in self._interiors_meet(boxes)]

    def count_metatiles(self, zooms: tuple[int, int], meta: int = 8) -> int:
        total = 0
        for z in range(zooms[0], zooms[1] + 1):
            if self.is_box:
                n = metatile_size(z, meta)
                xmin, ymin, xmax, ymax = tile_range(self.bbox, z)
                total += (xmax // n - xmin // n + 1) * (ymax // n - ymin // n + 1)
            else:
                total += sum(1 for _ in self.metatiles(z, meta))
        return total

    def _interiors_meet(self, boxes: np.ndarray) -> np.ndarray:
        import shapely
        return shapely.intersects(self.geometry, boxes) & ~shapely.touches(self.geometry, boxes)

    def geojson(self) -> dict:
        from shapely.geometry import mapping
        return mapping(self.geometry)

    def center(self) -> tuple[float, float]:
        c = self.geometry.representative_point() if not self.is_box else self.geometry.centroid
        return (c.x + 0.0, c.y + 0.0)  # no "-0.0"


def _meta_box(m: Meta) -> tuple[float, float, float, float]:
    return (_lon(m.z, m.x0), _lat(m.z, m.y0 + m.n), _lon(m.z, m.x0 + m.n), _lat(m.z, m.y0))


def _read(path: str) -> str:
    if not path:
        raise UsageError("--area needs a file name")
    with file_errors_as_usage(f"area file {path}"), open(path, "rb") as f:
        raw = f.read(256 * 1024 * 1024 + 1)
    if len(raw) > 256 * 1024 * 1024:
        raise UsageError(f"area file {path} is larger than 256 MB")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"area file {os.path.basename(path)} is not UTF-8 text") from None


def _polygons(doc: Any, name: str) -> list[Any]:
    """Every polygon of a GeoJSON document, checked; ``UsageError`` otherwise."""
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise UsageError(f"area {name} is not a GeoJSON object (no \"type\")")
    crs = doc.get("crs")
    if isinstance(crs, dict):
        crs_name = (crs.get("properties") or {}).get("name") if isinstance(crs.get("properties"), dict) else None
        if crs_name and crs_name not in _LONLAT_CRS:
            raise UsageError(f"area {name} uses CRS {crs_name}; only longitude/latitude (CRS84) is supported")
    kind = doc["type"]
    if kind == "FeatureCollection":
        feats = doc.get("features")
        if not isinstance(feats, list):
            raise UsageError(f"area {name}: FeatureCollection without a \"features\" list")
        items = []
        for i, f in enumerate(feats):
            if not isinstance(f, dict) or f.get("type") != "Feature":
                raise UsageError(f"area {name}: features[{i}] is not a Feature")
            items.append((f"features[{i}]", f.get("geometry")))
    elif kind == "Feature":
        items = [("feature", doc.get("geometry"))]
    else:
        items = [("geometry", doc)]
    out: list[Any] = []
    for where, g in items:
        if g is None:
            continue  # a feature without geometry covers nothing
        out.extend(_geometry_polygons(g, f"area {name}: {where}"))
    if not out:
        raise UsageError(f"area {name} has no polygons")
    return out


def _geometry_polygons(g: Any, where: str) -> list[Any]:
    if not isinstance(g, dict) or not isinstance(g.get("type"), str):
        raise UsageError(f"{where} is not a GeoJSON geometry")
    kind = g["type"]
    if kind == "GeometryCollection":
        parts = g.get("geometries")
        if not isinstance(parts, list):
            raise UsageError(f"{where}: GeometryCollection without \"geometries\"")
        out = []
        for i, p in enumerate(parts):
            out.extend(_geometry_polygons(p, f"{where}.geometries[{i}]"))
        return out
    if kind not in ("Polygon", "MultiPolygon"):
        raise UsageError(f"{where} is a {kind}, not a Polygon or MultiPolygon")
    import shapely
    from shapely.geometry import shape
    from shapely.validation import explain_validity
    try:
        geom = shape(g)
    except Exception as e:  # shapely raises several kinds for bad coordinates
        raise UsageError(f"{where} has malformed coordinates ({type(e).__name__}: {e})") from None
    if geom.is_empty:
        return []
    coords = shapely.get_coordinates(geom)
    if not np.all(np.isfinite(coords)):
        raise UsageError(f"{where} has a non-finite coordinate")
    w, s, e, n = geom.bounds
    if w < -180 or e > 180 or s < -90 or n > 90:
        raise UsageError(f"{where} has coordinates outside longitude/latitude "
                         f"({w:g},{s:g},{e:g},{n:g}); is it projected?")
    if not geom.is_valid:
        raise UsageError(f"{where} is not a valid polygon: {explain_validity(geom)}")
    return [geom]


def lonlat_bounds_of(m: Meta) -> list[float]:
    """``[west, south, east, north]`` of a metatile, rounded to 1e-7 degrees."""
    return [round(v, 7) for v in _meta_box(m)]


__all__ = ["Area", "lonlat_bounds_of"]
