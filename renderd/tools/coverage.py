"""Coverage of an area by the cache, after MapCache's ``mapcache_detail``
(MapServer RFC 122), with metatiles in place of its SQLite files.

For every metatile meeting the area: ``required`` is the number of its
tiles in the area, ``cached`` how many of those are stored, ``coverage``
their ratio; the same per zoom and overall. As in the RFC, sizes are
estimated from what is stored: ``average_tile_size`` is the mean size of
every stored tile of the metatiles involved (counted tile by tile, also
those outside the area, as the RFC counts whole files), ``estimated_full_size``
and ``estimated_missing_size`` are that mean times the tiles required and
missing; ``stored_size`` is what the cached tiles of the area take in the
store after deduplication (each distinct tile content once).
"""

from __future__ import annotations

from ..store.base import Store
from ..store.index import EMPTY
from .area import Area, lonlat_bounds_of

DIGITS = 4


def ratio(cached: int, required: int) -> float:
    return round(cached / required, DIGITS) if required else 0.0


def coverage(store: Store, layer: str, area: Area, zooms: tuple[int, int], meta: int = 8,
             short: bool = False) -> dict:
    """The RFC 122 report as a dict ready for ``json.dumps``."""
    size_of: dict[str, int] = {}
    all_tiles = 0            # stored tiles of the metatiles involved, tile by tile
    all_bytes = 0
    region_hashes: set[str] = set()
    levels = []
    g_cached = g_required = 0
    for z in range(zooms[0], zooms[1] + 1):
        metas_out = []
        z_cached = z_required = 0
        for m in area.metatiles(z, meta):
            mask = area.tile_mask(m)
            required = sum(mask)
            got = store.metatile_sizes(layer, m)
            cached = 0
            stale = False
            if got is not None:
                idx, sizes = got
                size_of.update(sizes)
                stale = idx.stale
                for inside, h in zip(mask, idx.hashes):
                    if h == EMPTY:
                        continue
                    all_tiles += 1
                    all_bytes += sizes.get(h, 0)
                    if inside:
                        cached += 1
                        region_hashes.add(h)
            z_cached += cached
            z_required += required
            if short and cached == 0:
                continue
            entry = {"x": m.x0, "y": m.y0, "bounding_box": lonlat_bounds_of(m),
                     "cached": cached, "required": required, "coverage": ratio(cached, required)}
            if stale:
                entry["stale"] = True
            metas_out.append(entry)
        levels.append({"level": z, "metatiles": metas_out, "cached": z_cached,
                       "required": z_required, "coverage": ratio(z_cached, z_required)})
        g_cached += z_cached
        g_required += z_required
    avg = all_bytes / all_tiles if all_tiles else None
    sizes = {
        "average_tile_size": None if avg is None else round(avg, 1),
        "estimated_full_size": None if avg is None else int(round(avg * g_required)),
        "estimated_missing_size": None if avg is None else int(round(avg * (g_required - g_cached))),
        "stored_size": sum(size_of.get(h, 0) for h in region_hashes),
    }
    return {
        "layer": layer,
        "region": {"bounding_box": [round(v, 7) for v in area.bbox], "geometry": _plain(area.geojson())},
        "zoom_levels": levels,
        "cached": g_cached,
        "required": g_required,
        "coverage": ratio(g_cached, g_required),
        "sizes": sizes,
    }


def _plain(obj: object) -> object:
    """shapely's ``mapping`` gives tuples; JSON wants lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj

