"""The pyramid stage's readiness (renderd.pipeline.readiness), property-tested:
whatever the datasets' boxes and the order they arrive in, every metatile
of the area's plan comes out exactly once, and never before every dataset
meeting it has arrived."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings, strategies as st

from renderd.pipeline.readiness import Readiness, bounds_geometry, meta_box, union_area
from renderd.tools.area import Area

# on a half-degree grid: edges often fall exactly on metatile edges (0, 22.5, 45...)
lon = st.integers(-358, 358).map(lambda v: v / 2)
lat = st.integers(-160, 160).map(lambda v: v / 2)


@st.composite
def boxes(draw):
    w, e = sorted([draw(lon), draw(lon)])
    s, n = sorted([draw(lat), draw(lat)])
    if e - w < 0.5 or n - s < 0.5:
        e, n = w + 0.5, s + 0.5
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        return (e, s, w, n)          # across the antimeridian
    return (w, s, e, n)


def meets(geom, m) -> bool:
    b = meta_box(m)
    return bool(shapely.intersects(geom, b) and not shapely.touches(geom, b))


@settings(max_examples=80, deadline=None)
@given(st.lists(boxes(), min_size=1, max_size=6), st.data(), st.booleans(), st.booleans())
def test_each_metatile_once_after_its_datasets(bounds, data, given_box, unknown):
    expected = {i: b for i, b in enumerate(bounds)}
    if unknown:
        expected[len(bounds)] = None              # a dataset of unknown bounds
    if given_box:
        area = Area.from_bbox("-60,-40,70,60")
    else:
        area = union_area([b for b in bounds])
    if area is None:
        return
    zooms = (0, 4)
    r = Readiness(area, zooms, 8, expected)
    order = data.draw(st.permutations(list(expected)))
    arrived: set[int] = set()
    seen: list = []
    geoms = {i: (area.geometry if b is None else area.geometry.intersection(bounds_geometry(b)))
             for i, b in expected.items()}
    for i in order:
        arrived.add(i)
        for m in r.arrive(i):
            waiting = [j for j, g in geoms.items() if j not in arrived and meets(g, m)]
            assert not waiting, (m, waiting)
            assert any(meets(geoms[j], m) for j in arrived)
            seen.append(m)
    assert r.complete
    for m in r.sweep():
        assert not any(meets(g, m) for g in geoms.values())
        seen.append(m)
    plan = [m for z in range(zooms[0], zooms[1] + 1) for m in area.metatiles(z, 8)]
    assert len(seen) == len(set(seen)), "a metatile came out twice"
    assert sorted(seen) == sorted(plan)
    assert r.total() == len(plan)


def test_a_mosaic_renders_a_tile_of_two_datasets_after_the_second():
    west, east = (-10.0, 0.0, 5.0, 10.0), (5.0, 0.0, 20.0, 10.0)
    area = union_area([west, east])
    r = Readiness(area, (4, 8), 8, {"w": west, "e": east})
    first = list(r.arrive("w"))
    # the metatiles of the west part only; none across 5 degrees east
    assert first and all(meta_box(m).bounds[2] <= 5.0 for m in first)
    second = list(r.arrive("e"))
    across = [m for m in second if meta_box(m).bounds[0] < 5.0 < meta_box(m).bounds[2]]
    assert across and {m.z for m in across} == {4, 5, 6, 7, 8}
    assert not list(r.sweep())
    assert len(first) + len(second) == r.total()


def test_arriving_twice_or_unknown_gives_nothing():
    area = Area.from_bbox("0,0,10,10")
    r = Readiness(area, (3, 3), 8, {1: (0.0, 0.0, 10.0, 10.0)})
    assert list(r.arrive(1))
    assert not list(r.arrive(1)) and not list(r.arrive(99))
    assert np.all([not list(r.sweep())])
