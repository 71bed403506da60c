"""Tile math against mercantile as the oracle, with hypothesis properties."""

import mercantile
import pytest
from hypothesis import given, strategies as st

from renderd import tilemath as tm
from renderd.errors import TileError, UsageError

zooms = st.integers(min_value=0, max_value=22)


@st.composite
def tiles(draw):
    z = draw(zooms)
    n = 1 << z
    return tm.Tile(z, draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1)))


@given(tiles(), st.sampled_from([1, 2, 4, 8, 16]))
def test_metatile_contains_tile(t, meta):
    m = tm.metatile_of(*t, meta=meta)
    assert m.n == min(meta, 1 << t.z)
    assert m.x0 <= t.x < m.x0 + m.n and m.y0 <= t.y < m.y0 + m.n
    assert m.x0 % m.n == 0 and m.y0 % m.n == 0
    i = tm.tile_index(m, t.x, t.y)
    assert tm.index_tile(m, i) == t
    assert t in set(tm.meta_tiles(m))


@given(tiles())
def test_merc_bounds_match_mercantile(t):
    ours = tm.merc_bounds(*t)
    theirs = mercantile.xy_bounds(t.x, t.y, t.z)
    # mod_tile's constant is rounded to 0.1 mm; agree to a millimetre
    for a, b in zip(ours, (theirs.left, theirs.bottom, theirs.right, theirs.top)):
        assert a == pytest.approx(b, abs=1e-3)


@given(tiles())
def test_meta_lnglat_bounds_cover_tiles(t):
    m = tm.metatile_of(*t)
    mb = tm.meta_lnglat_bounds(m)
    tb = mercantile.bounds(t.x, t.y, t.z)
    assert mb.west <= tb.west + 1e-9 and mb.east >= tb.east - 1e-9
    assert mb.south <= tb.south + 1e-9 and mb.north >= tb.north - 1e-9


@given(st.floats(-179, 178), st.floats(-80, 79), st.floats(0.001, 1), st.floats(0.001, 1),
       st.integers(0, 14))
def test_metatiles_in_bbox_cover_mercantile_tiles(w, s, dw, dh, z):
    bbox = tm.BBox(w, s, w + dw, s + dh)
    metas = set(tm.metatiles_in_bbox(bbox, z))
    expected = {tm.metatile_of(t.z, t.x, t.y) for t in mercantile.tiles(*bbox, zooms=[z])}
    assert metas == expected
    assert tm.count_tiles_in_bbox(bbox, z) == len(list(mercantile.tiles(*bbox, zooms=[z])))


@given(tiles(), st.integers(0, 4))
def test_parents_and_children_are_inverse(t, depth):
    m = tm.metatile_of(*t)
    for child in tm.child_metatiles(m, min(m.z + depth, 24)):
        assert m in set(tm.parent_metatiles(child, m.z))


def test_small_zooms_have_small_metatiles():
    assert tm.metatile_of(0, 0, 0) == tm.Meta(0, 0, 0, 1)
    assert tm.metatile_of(1, 1, 1) == tm.Meta(1, 0, 0, 2)
    assert tm.metatile_of(2, 3, 2) == tm.Meta(2, 0, 0, 4)
    assert tm.metatile_of(3, 7, 7) == tm.Meta(3, 0, 0, 8)
    assert tm.metatile_of(10, 17, 9) == tm.Meta(10, 16, 8, 8)


@pytest.mark.parametrize("z,x,y", [(-1, 0, 0), (31, 0, 0), (3, 8, 0), (3, 0, -1), (0, 1, 0)])
def test_check_tile_refuses_outside(z, x, y):
    with pytest.raises(TileError):
        tm.check_tile(z, x, y)


def test_check_tile_layer_zooms():
    with pytest.raises(TileError, match="zoom 5 outside 0-4"):
        tm.check_tile(5, 0, 0, 0, 4)


@pytest.mark.parametrize("text", ["", "a", "1-", "5-3", "1-2-3", "0-31"])
def test_parse_zoom_range_refuses(text):
    with pytest.raises(UsageError):
        tm.parse_zoom_range(text)


def test_parse_zoom_range():
    assert tm.parse_zoom_range("3-9") == (3, 9)
    assert tm.parse_zoom_range("7") == (7, 7)


@pytest.mark.parametrize("text", ["1,2,3", "10,0,5,5", "-200,0,0,10", "0,-95,10,10", "0,10,10,5",
                                  "nan,0,1,1", "a,b,c,d"])
def test_parse_bbox_refuses(text):
    with pytest.raises(UsageError):
        tm.parse_bbox(text)


def test_parse_bbox_clamps_to_mercator():
    b = tm.parse_bbox("-180,-90,180,90")
    assert b.west == -180 and b.east == 180 and -85.06 < b.south < -85 and 85 < b.north < 85.06
