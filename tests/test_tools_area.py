"""Areas: metatiles by real geometry, tile masks, and readable GeoJSON errors.

The oracle is tile by tile with mercantile and shapely (a different path
from the vectorised metatile rows of renderd.tools.area)."""

from __future__ import annotations

import json
from pathlib import Path

import mercantile
import pytest
import shapely
from hypothesis import given, settings, strategies as st
from shapely.geometry import box, shape

from renderd.errors import UsageError
from renderd.tilemath import index_tile, metatile_of, metatiles_in_bbox, parse_bbox
from renderd.tools.area import Area

DATA = Path(__file__).parent / "data"
AREA = DATA / "tools_area.geojson"


def oracle(geom, z: int, meta: int = 8) -> set:
    """Metatiles holding a tile whose interior meets the polygon's interior."""
    out = set()
    w, s, e, n = geom.bounds
    for t in mercantile.tiles(w, s, e, n, zooms=[z]):
        b = mercantile.bounds(t)
        tb = box(b.west, b.south, b.east, b.north)
        if geom.intersects(tb) and not geom.touches(tb):
            out.add(metatile_of(t.z, t.x, t.y, meta))
    return out


def load_geom(path: Path):
    doc = json.loads(path.read_text())
    return shapely.union_all([shape(f["geometry"]) for f in doc["features"] if f["geometry"]])


@pytest.mark.parametrize("z", range(0, 10))
def test_polygon_metatiles_match_tile_by_tile_oracle(z):
    area = Area.from_geojson(str(AREA))
    got = list(area.metatiles(z))
    assert len(got) == len(set(got))
    assert set(got) == oracle(load_geom(AREA), z)


def test_polygon_is_tested_by_geometry_not_bounding_box():
    area = Area.from_geojson(str(AREA))
    by_geom = set(area.metatiles(8))
    by_box = set(metatiles_in_bbox(area.bbox, 8))
    assert by_geom < by_box
    assert len(by_geom) == 20 and len(by_box) == 240


@settings(max_examples=60, deadline=None)
@given(st.floats(-179, 178), st.floats(-80, 79), st.floats(0.01, 1.0), st.floats(0.01, 1.0),
       st.integers(0, 12))
def test_box_polygon_equals_bbox(w, s, dw, dh, z):
    """A GeoJSON rectangle and the same --bbox give the same metatiles and masks.

    Coordinates are rounded to 1e-3 degrees, as people write them: a box
    edge 1e-256 degrees past a tile edge is in that tile for the geometry
    test and not for the bbox's 1e-9 tolerance, and neither is wrong."""
    w, s = round(w, 3), round(s, 3)
    e, n = min(round(w + dw, 3), 180.0), min(round(s + dh, 3), 85.0)
    text = f"{w!r},{s!r},{e!r},{n!r}"
    a = Area.from_bbox(text)
    g = Area.from_geojson_text(json.dumps({"type": "Polygon", "coordinates": [
        [[w, s], [e, s], [e, n], [w, n], [w, s]]]}))
    ma, mg = list(a.metatiles(z)), list(g.metatiles(z))
    assert ma == list(metatiles_in_bbox(parse_bbox(text), z))
    assert set(ma) == set(mg)
    for m in ma[:4]:
        assert a.tile_mask(m) == g.tile_mask(m)


def test_tile_mask_matches_oracle_tiles():
    area = Area.from_geojson(str(AREA))
    geom = load_geom(AREA)
    for m in area.metatiles(9):
        mask = area.tile_mask(m)
        assert any(mask)
        for i, inside in enumerate(mask):
            t = index_tile(m, i)
            b = mercantile.bounds(t.x, t.y, t.z)
            tb = box(b.west, b.south, b.east, b.north)
            assert inside == (geom.intersects(tb) and not geom.touches(tb)), t


def test_edge_touching_metatiles_are_not_included():
    # exactly the tiles 4..11 x 4..11 of zoom 4: its neighbours only touch it
    b = mercantile.bounds(4, 4, 4)
    c = mercantile.bounds(11, 11, 4)
    poly = {"type": "Polygon", "coordinates": [[[b.west, c.south], [c.east, c.south], [c.east, b.north],
                                                [b.west, b.north], [b.west, c.south]]]}
    area = Area.from_geojson_text(json.dumps(poly))
    metas = list(area.metatiles(4))
    assert [(m.x0, m.y0) for m in metas] == [(0, 0), (8, 0), (0, 8), (8, 8)]
    assert sum(area.tile_mask(metas[0])) == 16


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return str(p)


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "not a GeoJSON object"),
    ('{"type": "FeatureCollection"}', "without a \"features\" list"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
     '{"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}', "is a LineString, not a Polygon"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}', "not a valid polygon"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [400000, 0], [0, 300000], [0, 0]]]}', "is it projected"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1]]]}', "malformed coordinates"),
    ('{"type": "FeatureCollection", "features": []}', "has no polygons"),
    ('{"type": "Polygon", "coordinates": [[[0, 86], [1, 86], [1, 89], [0, 86]]]}', "outside the Web Mercator"),
    ('{"type": "Polygon", "crs": {"type": "name", "properties": {"name": "EPSG:3067"}}, '
     '"coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}', "only longitude/latitude"),
])
def test_bad_geojson_is_a_usage_error(tmp_path, content, message):
    path = write(tmp_path, "a.geojson", content)
    with pytest.raises(UsageError, match=message) as e:
        Area.from_geojson(path)
    assert "\n" not in str(e.value)


def test_unreadable_area_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        Area.from_geojson(str(tmp_path / "missing.geojson"))
    with pytest.raises(UsageError, match="is a directory"):
        Area.from_geojson(str(tmp_path))
    with pytest.raises(UsageError, match="not UTF-8"):
        Area.from_geojson(write(tmp_path, "b.geojson", b"\xff\xfe\x00garbage"))


def test_exactly_one_of_bbox_and_area():
    with pytest.raises(UsageError, match="exactly one"):
        Area.from_options(None, None)
    with pytest.raises(UsageError, match="exactly one"):
        Area.from_options("0,0,1,1", str(AREA))


@pytest.mark.parametrize("text", ["5,45,45,70", "-179.9,-85,179.9,85", "24.9,60.1,25.0,60.2"])
def test_count_metatiles_of_a_box_matches_the_listing(text):
    a = Area.from_bbox(text)
    assert a.count_metatiles((0, 11)) == sum(1 for z in range(12) for _ in a.metatiles(z))
