"""styles/osm.xml over a real osm2pgsql import of the Helsinki extract.

osm2pgsql (classic pgsql output, the default) imports data/osm/Helsinki.osm.pbf
into the throwaway PostGIS cluster of the ``postgis_dsn`` fixture; the style
is then rendered over central Helsinki.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import mercantile
import numpy as np
import pytest

from renderd.config import parse
from renderd.errors import StyleError
from renderd.render.mapnik_renderer import MapnikRenderer
from renderd.render.tiles import EncodeMemo
from renderd.tilemath import meta_merc_bounds, metatile_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STYLE = os.path.join(ROOT, "styles", "osm.xml")
PBF = os.path.join(ROOT, "data", "osm", "Helsinki.osm.pbf")
CENTRE = (24.94, 60.17)

pytestmark = pytest.mark.postgis


@pytest.fixture(scope="module")
def osm_db(postgis_dsn):
    if not shutil.which("osm2pgsql"):
        pytest.skip("osm2pgsql is not installed (run scripts/setup)")
    if not os.path.exists(PBF):
        pytest.skip("data/osm/Helsinki.osm.pbf is missing (run scripts/fetch-sample-data)")
    d = postgis_dsn
    r = subprocess.run(["osm2pgsql", "--create", "--output=pgsql", "--cache", "100",
                        "-H", d["host"], "-P", str(d["port"]), "-U", d["user"], "-d", d["dbname"], PBF],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return d


def osm_layer(db, **params):
    values = {"host": db["host"], "port": str(db["port"]), "dbname": db["dbname"],
              "user": db["user"], "password": ""}
    values.update(params)
    return parse({"layer": [{"name": "osm", "style": STYLE, "minzoom": 10, "maxzoom": 19,
                             "params": values}]}, None, None).layers[0]


def test_z16_metatile_over_central_helsinki_has_many_distinct_tiles(osm_db):
    t = mercantile.tile(*CENTRE, 16)
    meta = metatile_of(16, t.x, t.y)
    with MapnikRenderer(osm_layer(osm_db), memo=EncodeMemo()) as r:
        res = r.render(meta)
        image = r.render_image(meta_merc_bounds(meta), 2048, 2048)
    assert len(res.hashes) == 64
    assert res.unique >= 8                       # streets, blocks, parks: distinct tiles
    assert not image.is_solid()
    px = np.frombuffer(image.to_string(), np.uint8).reshape(2048, 2048, 4)
    colours = np.unique(px[::4, ::4].reshape(-1, 4), axis=0)
    assert len(colours) > 50                     # roads, buildings, landuse, labels
    # the tile at the centre point has content, not just the background
    centre = res.tile((t.x - meta.x0) * 8 + (t.y - meta.y0))
    assert len(centre) > 2000


@pytest.mark.parametrize("z", [14, 18])
def test_other_zooms_render(osm_db, z):
    t = mercantile.tile(*CENTRE, z)
    with MapnikRenderer(osm_layer(osm_db), memo=EncodeMemo()) as r:
        res = r.render(metatile_of(z, t.x, t.y))
    assert res.unique >= 2


def test_unreachable_database_is_a_style_error_naming_the_style(osm_db):
    with pytest.raises(StyleError) as e:
        MapnikRenderer(osm_layer(osm_db, dbname="no_such_db")).open()
    assert "osm.xml" in str(e.value) and "\n" not in str(e.value)
