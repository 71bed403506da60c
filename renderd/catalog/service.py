"""The catalog as the nginx front asks for it (protocol ``CATALOG``).

The front cannot read SQLite or PostgreSQL itself, and must answer for a
catalog that changes under it (an ingest), so it asks the daemon, which
asks the catalog each time: what the front shows is never older than the
question. ``answer(question)`` takes the decoded JSON and gives the JSON
to send back:

``{"op": "keys", "layer": L}``
    the key combinations the raster layer L serves:
    ``{"layer", "keys": [names], "values": [[v1, ...], ...], "version"}``.
``{"op": "datasets", "layer": L, "where": {KEY: VALUE}, "limit": N, "page": P}``
    a page (from 1) of the datasets the layer selects, with their keys,
    bounds and the URLs of their TileJSON and metadata.
``{"op": "metadata", "layer": L, "values": [v1, ...]}``
    bounds, footprint, CRS, bands, dtype, nodata, valid share and per-band
    statistics of the dataset (or datasets, mosaicked) of one tile set.
``{"op": "tilejson", "layer": L, "values": [v1, ...]}``
    TileJSON 3.0.0 of one tile set, with the bounds of what it selects
    (its tile URLs start with BASE_PLACEHOLDER, the front puts its own).

An answer for something the catalog does not hold is
``{"status": 404, "error": "..."}``; a question that is not one of these
raises ``UsageError`` (the broker answers INVALID).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from .. import tilesets
from ..config import Config, LayerConfig
from ..errors import CatalogMissing, UsageError
from .base import Catalog
from .model import Bounds, Dataset

#: most datasets on one page of ``datasets``
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def not_found(why: str) -> dict[str, Any]:
    return {"status": 404, "error": why}


def _union(boxes: list[Bounds]) -> Bounds:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def describe(ds: Dataset) -> dict[str, Any]:
    """What ``/metadata/...`` tells of one dataset."""
    return {
        "keys": ds.keys, "bounds": list(ds.wgs84_bounds), "footprint": ds.footprint, "crs": ds.crs,
        "native_bounds": list(ds.bounds), "width": ds.width, "height": ds.height, "bands": ds.bands,
        "dtype": ds.dtype, "nodata": ds.nodata, "block": list(ds.block), "overviews": list(ds.overviews),
        "valid_share": ds.valid_share, "ingested": ds.ingested,
        "statistics": [{"band": i, "min": s.min, "max": s.max, "mean": s.mean, "stdev": s.stdev,
                        "count": s.count, "percentiles": {str(k): v for k, v in sorted(s.percentiles.items())}}
                       for i, s in enumerate(ds.stats, 1)],
    }


class CatalogService:
    """Answers CATALOG questions for the raster layers of ``cfg``; opens the
    catalog at the first question (``opener`` for tests)."""

    def __init__(self, cfg: Config, opener: Callable[[], Catalog] | None = None):
        self.cfg = cfg
        self._opener = opener or self._open_default
        self._catalog: Catalog | None = None

    def _open_default(self) -> Catalog:
        from . import open_catalog
        return open_catalog(self.cfg.catalog.url, create=False)

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def _cat(self) -> Catalog | None:
        """The catalog, or None while there is none yet (nothing ingested)."""
        if self._catalog is None:
            try:
                self._catalog = self._opener()
            except CatalogMissing:
                return None
        return self._catalog

    def _layer(self, q: dict[str, Any]) -> LayerConfig:
        name = q.get("layer")
        if not isinstance(name, str):
            raise UsageError("CATALOG question names no layer")
        lyr = self.cfg.layer(name)
        if lyr.kind != "raster":
            raise UsageError(f"layer {name} is not a raster layer")
        return lyr

    @staticmethod
    def _values(lyr: LayerConfig, q: dict[str, Any]) -> dict[str, str]:
        values = q.get("values", [])
        if (not isinstance(values, list) or len(values) != len(lyr.keys)
                or not tilesets.is_valid(tilesets.name(lyr.name, values))):
            raise UsageError(f"layer {lyr.name} takes {len(lyr.keys)} key values")
        return dict(zip(lyr.keys, values))

    def answer(self, q: dict[str, Any]) -> dict[str, Any]:
        op = q.get("op")
        handler = {"keys": self.keys, "datasets": self.datasets, "metadata": self.metadata,
                   "tilejson": self.tilejson}.get(op if isinstance(op, str) else "")
        if handler is None:
            raise UsageError(f"unknown CATALOG question {op!r}")
        try:
            return handler(self._layer(q), q)
        except Exception:
            # (a broken connection is not kept: the next question opens it again)
            self.close()
            raise

    # --- the questions -------------------------------------------------------
    def keys(self, lyr: LayerConfig, q: dict[str, Any]) -> dict[str, Any]:
        cat = self._cat()
        values = cat.key_values(lyr.collection, lyr.keys, lyr.where) if cat else []
        return {"layer": lyr.name, "keys": list(lyr.keys), "values": [list(v) for v in values],
                "version": cat.version(lyr.collection) if cat else 0}

    def _selected(self, lyr: LayerConfig, keys: dict[str, str]) -> list[Dataset]:
        cat = self._cat()
        return cat.find(lyr.collection, {**lyr.where, **keys}) if cat else []

    def datasets(self, lyr: LayerConfig, q: dict[str, Any]) -> dict[str, Any]:
        where = q.get("where", {})
        if not isinstance(where, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in where.items()):
            raise UsageError("where must be an object of KEY: VALUE")
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
            page = int(q.get("page", 1))
        except (TypeError, ValueError):
            raise UsageError("limit and page must be whole numbers") from None
        if not 1 <= limit <= MAX_LIMIT or page < 1:
            raise UsageError(f"limit must be 1 to {MAX_LIMIT} and page at least 1")
        cat = self._cat()
        sel = {**where, **lyr.where}
        total = cat.count(lyr.collection, sel) if cat else 0
        rows = cat.list(lyr.collection, sel, limit=limit, offset=(page - 1) * limit) if cat else []
        out = []
        for ds in rows:
            item: dict[str, Any] = {"keys": ds.keys, "bounds": list(ds.wgs84_bounds),
                                    "valid_share": ds.valid_share, "ingested": ds.ingested}
            if all(k in ds.keys for k in lyr.keys):
                ts = tilesets.name(lyr.name, [ds.keys[k] for k in lyr.keys])
                item.update(tileset=ts, tilejson=f"tiles/{ts}.json", metadata=f"metadata/{ts}.json")
            out.append(item)
        return {"layer": lyr.name, "keys": list(lyr.keys), "total": total, "page": page,
                "limit": limit, "datasets": out}

    def metadata(self, lyr: LayerConfig, q: dict[str, Any]) -> dict[str, Any]:
        keys = self._values(lyr, q)
        found = self._selected(lyr, keys)
        if not found:
            return not_found(f"{tilesets.name(lyr.name, list(keys.values()))}: no such datasets")
        if len(found) == 1:
            return {"layer": lyr.name, **describe(found[0]), "keys": keys}
        return {"layer": lyr.name, "keys": keys, "bounds": list(_union([d.wgs84_bounds for d in found])),
                "datasets": [describe(d) for d in found]}

    def tilejson(self, lyr: LayerConfig, q: dict[str, Any]) -> dict[str, Any]:
        from ..nginx.runtime_json import tilejson
        keys = self._values(lyr, q)
        found = self._selected(lyr, keys)
        if not found:
            return not_found(f"{tilesets.name(lyr.name, list(keys.values()))}: no such datasets")
        w, s, e, n = _union([d.wgs84_bounds for d in found])
        bounds = (max(w, -180.0), max(s, -85.0511), min(e, 180.0), min(n, 85.0511))
        ts = replace(lyr, name=tilesets.name(lyr.name, list(keys.values())), bounds=bounds)
        return tilejson(self.cfg, ts)
