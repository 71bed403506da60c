"""HiDPI tiles (``[[layer]] scales = [1, 2]``): ``/tiles/{layer}/{z}/{x}/{y}@2x.png``
is a tile set of its own (``world@2x``), rendered at twice the pixels over
the same area, stored, deduplicated, hot-cached, seeded, exported; its
TileJSON template; the demo map asks for it on a high-density screen."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess

import numpy as np
import pytest
from PIL import Image

from renderd import config as _config
from renderd import tilesets
from renderd.errors import UsageError
from renderd.tilemath import Meta
from tests.fixtures.stack import WORLD_STYLE, renderd_py
from tests.test_demo_page import browse, leaflet  # noqa: F401  (Leaflet in web/vendor/)
from tests.test_lua_front import (LAYER, SST, assert_tile, broker, disk_store, front_with_layers,  # noqa: F401
                                  make_meta, purge, redis_store, request, wait_xcache)


def test_scaled_tile_sets():
    cfg = _config.parse({"layer": [
        {"name": "world", "style": "w.xml", "scales": [2, 1], "buffer": 64, "scale": 1.5},
        {"name": "sst", "kind": "raster", "collection": "sst", "keys": ["month"], "scales": [1, 2, 3]},
        {"name": "plain", "style": "w.xml"}]}, check_files=False)
    world = cfg.layer("world")
    assert world.scales == (1, 2) and cfg.layer("plain").scales == (1,)
    w2 = tilesets.layer_of(cfg, "world@2x")
    assert (w2.name, w2.tile_size, w2.scale, w2.buffer, w2.metatile) == ("world@2x", 512, 3.0, 128, 8)
    s3 = tilesets.layer_of(cfg, "sst@3x/07")
    assert (s3.name, s3.tile_size, tilesets.key_values(s3)) == ("sst@3x/07", 768, {"month": "07"})
    assert tilesets.from_options(cfg, "sst", ["month=07"], 2) == "sst@2x/07"
    assert tilesets.with_scale("sst/07", 1) == "sst/07"
    assert list(tilesets.layer_parts(cfg)) == ["world", "world@2x", "sst", "sst@2x", "sst@3x", "plain"]
    for bad in ("world@3x", "plain@2x", "world@1x", "world@2x@2x", "sst/07@2x"):
        with pytest.raises(UsageError):
            tilesets.layer_of(cfg, bad)
    with pytest.raises(UsageError, match="has the scales 1"):
        tilesets.from_options(cfg, "plain", [], 2)
    for bad in ([2], [], [1, 1], [1, 5], "2", [1, True]):
        with pytest.raises(_config.ConfigError, match=r"layer\[0\]\.scales"):
            _config.parse({"layer": [{"name": "w", "style": "w.xml", "scales": bad}]}, check_files=False)


def test_ingest_marks_every_scale_of_the_tile_sets_it_feeds(tmp_path, catalog_url):
    from rasterio.transform import from_origin

    from renderd.catalog import open_catalog
    from renderd.store.disk import DiskStore
    from renderd.tilemath import metatiles_in_bbox
    from renderd.tools.ingest import Restale, ingest, merc_boxes
    from tests.fixtures.catalog import write_raster
    from tests.test_ingest import layer, put, stale_of
    lyr = layer(name="k", keys=["date"], scales=[1, 2])
    write_raster(tmp_path / "S2_1.tif", np.ones((1, 100, 100), np.uint8), transform=from_origin(10, 50, 0.1, 0.1))
    store = DiskStore(tmp_path / "cache")
    inside = next(metatiles_in_bbox(merc_boxes((10, 40, 20, 50))[0], 9))
    for ts in ("k/1", "k@2x/1", "k/2"):
        put(store, ts, [inside])
    assert store.layers() == ["k", "k/1", "k/2", "k@2x", "k@2x/1"]
    with open_catalog(catalog_url) as cat:
        s = ingest(cat, str(tmp_path / "S2_{date}.tif"), "s2", restale=Restale([lyr], "s2", lambda: store))
    assert s.ingested == 1
    assert [stale_of(store, ts) for ts in ("k/1", "k@2x/1", "k/2")] == [{inside}, {inside}, set()]


# --- the Lua front, with a fake broker ---------------------------------------------------

WORLD2 = dict(LAYER, scales=[1, 2])
SST2 = dict(SST, scales=[1, 2])


@pytest.fixture(params=["disk", "redis"])
def hidpi_front(request):
    return front_with_layers(request, [WORLD2, SST2])


def test_hidpi_tiles_are_a_tile_set_of_their_own(hidpi_front):
    ng, store, broker = hidpi_front
    meta = Meta(5, 8, 16, 8)
    store.put_metatile("world@2x", *make_meta("world@2x", meta))
    assert_tile(request(ng.port, "/tiles/world/5/9/17@2x.png"), 5, 9, 17, "STORE", layer="world@2x")
    assert_tile(wait_xcache(ng.port, "/tiles/world/5/15/23@2x.png", "HIT"), 5, 15, 23, "HIT", layer="world@2x")
    # the plain tile is another tile set: not stored, rendered under its own name
    assert_tile(request(ng.port, "/tiles/world/5/9/17.png"), 5, 9, 17, "RENDER")
    r = request(ng.port, "/tiles/world/6/9/17@2x.png?v=2")
    assert_tile(r, 6, 9, 17, "RENDER", layer="world@2x")
    assert [m[3:5] for m in broker.renders()] == [[b"world", b"5/9/17"], [b"world@2x", b"6/9/17"]]
    assert store.get_metatile("world@2x", Meta(6, 8, 16, 8)) is not None
    # a layer with keys: the scale goes with the layer's part of the name
    r = request(ng.port, "/tiles/sst/2024/07/5/9/17@2x.png")
    assert_tile(r, 5, 9, 17, "RENDER", layer="sst@2x/2024/07")
    assert store.get_metatile("sst@2x/2024/07", meta) is not None
    assert request(ng.port, "/tiles/sst/2024/09/5/9/17@2x.png").status == 404     # not in the catalog
    # purged by its own name
    status, rep = purge(ng, "5/9/17\n", layer="world@2x", mode="delete")
    assert status == 200 and rep["tiles"] == 64, rep
    assert request(ng.port, "/tiles/world/5/15/23@2x.png").h("x-cache") == "STORE"
    assert purge(ng, "5/9/17\n", layer="world@3x")[0] == 400
    assert purge(ng, "5/9/17\n", layer="sst@2x/2024/07")[0] == 200
    # a scale not configured, and malformed ones: never a render
    n = len(broker.renders())
    for path, status in (("/tiles/world/5/9/17@3x.png", 404), ("/tiles/world/5/9/17@2x.jpg", 404),
                         ("/tiles/world/5/9/17@2.png", 400), ("/tiles/world/5/9/17@x.png", 400),
                         ("/tiles/world/5/9@2x/17.png", 400), ("/tiles/world@2x/5/9/17.png", 400),
                         ("/tiles/world/5/9/17%402x.png", 400), ("/tiles/world/5/99/17@2x.png", 404)):
        r = request(ng.port, path)
        assert r.status == status, (path, r.status, r.body)
    assert len(broker.renders()) == n


# --- the whole stack ---------------------------------------------------------------------

LAYERS = f"""
[[layer]]
name = "world"
style = "{WORLD_STYLE}"
maxzoom = 6
scales = [1, 2]
attribution = "Natural Earth"
"""


def cli(stack, *args):
    r = subprocess.run(renderd_py() + [*args, "-c", str(stack.config)], capture_output=True, text=True,
                       timeout=300, cwd=str(stack.dir))
    return r


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.mark.slow
def test_hidpi_through_the_stack(stack_factory, tmp_path):
    s = stack_factory(layers=LAYERS)
    one, two = s.get("/tiles/world/3/4/2.png"), s.get("/tiles/world/3/4/2@2x.png")
    assert (one.status, two.status) == (200, 200)
    assert two.headers["content-type"] == "image/png" and two.headers["x-cache"] == "RENDER"
    a, b = pixels(one.body), pixels(two.body)
    assert a.shape == (256, 256, 3) and b.shape == (512, 512, 3)
    # the same area: the @2x tile shrunk to 256 px looks like the plain one
    small = b.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(small - a).mean() < 12, np.abs(small - a).mean()
    assert s.get("/tiles/world/3/4/2@2x.png").headers["x-cache"] in ("HIT", "STORE")
    assert s.get("/tiles/world/3/4/2@3x.png").status == 404
    # render in-process: the same bytes as served
    out = tmp_path / "t.png"
    r = cli(s, "render", "world", "3", "4", "2", "--scale", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == two.body
    # seed --scale 2: stored as its own tile set, deduplicated, then served without a render
    r = cli(s, "seed", "--layer", "world", "--scale", "2", "--zoom", "0-4", "--bbox", "-180,-85,180,85",
            "-q", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["layer"] == "world@2x" and summary["failed"] == 0 and summary["rendered"] >= 5
    assert s.get("/tiles/world/4/3/5@2x.png").headers["x-cache"] in ("HIT", "STORE")
    r = cli(s, "stats", "--layer", "world", "--scale", "2", "--zoom", "4", "--json")
    st = json.loads(r.stdout)["total"]
    assert st["tiles"] == 256 and st["unique_tiles"] < st["tiles"]   # the open sea, once
    r = cli(s, "stats", "--layer", "world", "--zoom", "4", "--json")
    assert json.loads(r.stdout)["total"]["tiles"] == 0                # scale 1 untouched at z4
    # export --scale 2: 512 px tiles
    mb = tmp_path / "w2.mbtiles"
    r = cli(s, "export", "--layer", "world", "--scale", "2", "--zoom", "3", "--bbox", "0,45,40,60",
            "-o", str(mb))
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(mb) as db:
        (blob,) = db.execute("SELECT tile_data FROM tiles WHERE zoom_level=3 AND tile_column=4 "
                             "AND tile_row=?", (2 ** 3 - 1 - 2,)).fetchone()
    assert blob == two.body
    for args in (("seed", "--layer", "world", "--scale", "3", "--zoom", "1", "--bbox", "0,0,1,1"),
                 ("render", "world", "1", "0", "0", "--scale", "5", "-o", str(out))):
        r = cli(s, *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # TileJSON: the @2x template beside the plain one
    tj = json.loads(s.get("/tiles/world.json").body)
    assert tj["tiles"] == [s.url + "tiles/world/{z}/{x}/{y}.png"]
    assert tj["tiles@2x"] == [s.url + "tiles/world/{z}/{x}/{y}@2x.png"]


@pytest.mark.slow
@pytest.mark.parametrize("factor", [1, 2])
def test_demo_map_asks_for_hidpi_tiles_on_a_dense_screen(stack_factory, tmp_path, factor):
    s = stack_factory(layers=LAYERS)
    r = browse(s.url, tmp_path, "--dump-dom", f"--force-device-scale-factor={factor}", budget_ms=15000)
    dom = r.stdout
    assert "data-error" not in dom, re.findall(r'data-error="[^"]*"', dom)
    assert f'data-scale="{factor}"' in dom, dom[-2000:]
    srcs = re.findall(r'<img[^>]+src="([^"]+)"[^>]+leaflet-tile-loaded', dom)
    suffix = "@2x.png" if factor == 2 else ".png"
    assert len(srcs) >= 4 and all(src.endswith(suffix) and (factor == 2 or "@" not in src)
                                  for src in srcs), srcs


@pytest.mark.slow
def test_hidpi_raster_tiles(stack_factory, tmp_path):
    """A raster layer's @2x tile: the same area read at twice the pixels."""
    from tests.test_raster_stack import LAYERS as RASTER, sst_like
    s = stack_factory(start=False, layers=RASTER.format(dir=tmp_path) + "scales = [1, 2]\n")
    sst_like(tmp_path / "temp_01.tif", 1)
    r = cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "-q")
    assert r.returncode == 0, r.stderr
    s.start()
    one, two = s.get("/tiles/temp/01/4/8/6.png"), s.get("/tiles/temp/01/4/8/6@2x.png")
    assert (one.status, two.status, two.headers["x-cache"]) == (200, 200, "RENDER")
    a = np.asarray(Image.open(io.BytesIO(one.body)).convert("RGBA")).astype(int)
    b = np.asarray(Image.open(io.BytesIO(two.body)).convert("RGBA")).astype(int)
    assert a.shape == (256, 256, 4) and b.shape == (512, 512, 4)
    assert np.abs(b[::2, ::2] - a).mean() < 4          # nearest resampling: every other pixel, nearly
    out = tmp_path / "t.png"
    r = cli(s, "render", "temp", "4", "8", "6", "--key", "month=01", "--scale", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == two.body
    assert s.get("/tiles/temp/02/4/8/6@2x.png").status == 404         # not in the catalog
    tj = json.loads(s.get("/tiles/temp/01.json").body)
    assert tj["tiles@2x"] == [s.url + "tiles/temp/01/{z}/{x}/{y}@2x.png"]


def test_expire_covers_every_scale_unless_told_one(capsys, tmp_path, monkeypatch):
    """An osm2pgsql expiry list is about the data: it expires the @2x tiles too."""
    from renderd.cli.main import main
    from renderd.store.disk import DiskStore
    from tests.fixtures.store import make_index
    (tmp_path / "style.xml").write_text("<Map/>")
    conf = tmp_path / "renderd.toml"
    conf.write_text(f'[daemon]\nbroker = "tcp://127.0.0.1:9"\n[http]\npurge_url = "off"\n'
                    f'[store]\npath = "{tmp_path / "cache"}"\n'
                    '[[layer]]\nname = "osm"\nstyle = "style.xml"\nmaxzoom = 5\nscales = [1, 2]\n')
    st = DiskStore(str(tmp_path / "cache"))
    m = Meta(3, 0, 0, 8)
    for ts in ("osm", "osm@2x"):
        st.put_metatile(ts, *make_index(m, [1] * 64))

    def expire(*args: str, text: str = "3/1/1\n") -> list[dict]:
        monkeypatch.setattr("sys.stdin", io.StringIO(text))
        with pytest.raises(SystemExit) as e:
            main(["expire", "-c", str(conf), "--layer", "osm", "--json", *args])
            raise SystemExit(0)
        out, err = capsys.readouterr()
        assert e.value.code == 0, err
        return [json.loads(line) for line in out.splitlines()]

    reps = expire("--scale", "2")
    assert [(r["layer"], r["metatiles"]) for r in reps] == [("osm@2x", 1)]
    assert st.get_index("osm@2x", m).stale and not st.get_index("osm", m).stale
    reps = expire("--mode", "delete")
    assert [(r["layer"], r["metatiles"]) for r in reps] == [("osm", 1), ("osm@2x", 1)]
    assert st.get_index("osm", m) is None and st.get_index("osm@2x", m) is None
