"""``Dataset`` to and from JSON (the CLI, HTTP) and to and from catalog rows.

A row holds each scalar field in a column of its own and the structured
ones (keys, transform, overviews, footprint, statistics, metadata) as JSON
text, the same on SQLite and PostgreSQL; ``COLUMNS`` is the order both
backends use. ``nodata`` is kept as text (``repr`` of the float) so NaN and
infinities survive SQLite, which stores a NaN REAL as NULL.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from .model import BandStats, Dataset

#: catalog_dataset's columns after ``id``, in the order of ``to_row``
COLUMNS = ("collection", "path", "keys", "size", "mtime", "crs", "transform", "width", "height",
           "bands", "dtype", "nodata", "block_rows", "block_cols", "overviews",
           "minx", "miny", "maxx", "maxy", "west", "south", "east", "north",
           "footprint", "valid_share", "stats", "metadata", "ingested")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def keys_text(keys: dict[str, str]) -> str:
    """The canonical JSON of a key dictionary (sorted), as stored."""
    return _dumps(dict(keys))


def _nodata_text(v: float | None) -> str | None:
    return None if v is None else repr(float(v))


def to_row(ds: Dataset) -> tuple[Any, ...]:
    """Values for ``COLUMNS``."""
    return (ds.collection, ds.path, keys_text(ds.keys), int(ds.size), float(ds.mtime), ds.crs,
            _dumps([float(c) for c in ds.transform]), ds.width, ds.height, ds.bands, ds.dtype,
            _nodata_text(ds.nodata), int(ds.block[0]), int(ds.block[1]),
            _dumps([int(f) for f in ds.overviews]),
            *(float(c) for c in ds.bounds), *(float(c) for c in ds.wgs84_bounds),
            None if ds.footprint is None else _dumps(ds.footprint), float(ds.valid_share),
            _dumps([s.to_json() for s in ds.stats]), _dumps(ds.metadata), float(ds.ingested))


def from_row(row: Sequence[Any]) -> Dataset:
    """A ``Dataset`` from ``(id, *COLUMNS)``."""
    r = dict(zip(("id",) + COLUMNS, row))
    return Dataset(
        collection=r["collection"], keys=json.loads(r["keys"]), path=r["path"], size=int(r["size"]),
        mtime=float(r["mtime"]), crs=r["crs"], transform=tuple(json.loads(r["transform"])),
        width=int(r["width"]), height=int(r["height"]), bands=int(r["bands"]), dtype=r["dtype"],
        nodata=None if r["nodata"] is None else float(r["nodata"]),
        block=(int(r["block_rows"]), int(r["block_cols"])),
        overviews=tuple(json.loads(r["overviews"])),
        bounds=(float(r["minx"]), float(r["miny"]), float(r["maxx"]), float(r["maxy"])),
        wgs84_bounds=(float(r["west"]), float(r["south"]), float(r["east"]), float(r["north"])),
        footprint=None if r["footprint"] is None else json.loads(r["footprint"]),
        valid_share=float(r["valid_share"]),
        stats=tuple(BandStats.from_json(s) for s in json.loads(r["stats"])),
        metadata=json.loads(r["metadata"]), ingested=float(r["ingested"]), id=int(r["id"]))


def _finite(v: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def to_json(ds: Dataset) -> dict[str, Any]:
    """A JSON object of every field (NaN and infinities as null, except in
    ``nodata``, which is then the string ``"nan"``, ``"inf"`` or ``"-inf"``)."""
    nodata: Any = ds.nodata
    if nodata is not None and not math.isfinite(nodata):
        nodata = repr(float(nodata))
    return _finite({
        "id": ds.id, "collection": ds.collection, "keys": dict(ds.keys), "path": ds.path,
        "size": ds.size, "mtime": ds.mtime, "crs": ds.crs, "transform": list(ds.transform),
        "width": ds.width, "height": ds.height, "bands": ds.bands, "dtype": ds.dtype,
        "block": list(ds.block), "overviews": list(ds.overviews), "bounds": list(ds.bounds),
        "wgs84_bounds": list(ds.wgs84_bounds), "footprint": ds.footprint,
        "valid_share": ds.valid_share, "stats": [s.to_json() for s in ds.stats],
        "metadata": ds.metadata, "ingested": ds.ingested,
    }) | {"nodata": nodata}


def same_content(a: Dataset, b: Dataset) -> bool:
    """Whether two records describe the same data (everything but id and
    ingest time): a re-ingest that finds this changes nothing."""
    return to_row(a)[:-1] == to_row(b)[:-1]
