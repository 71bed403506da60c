"""Raster layers through the whole stack (``renderd-py up``: nginx + Lua, the
daemon, the raster renderer, the disk store) with a real SQLite catalog
filled by ``renderd-py ingest``: tiles of tile sets of a layer with keys,
the same bytes from nginx, ``render`` and ``export``, one render for 200
concurrent requests, an ingest showing without a restart."""

from __future__ import annotations

import concurrent.futures
import json
import re
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from rasterio.transform import from_origin

from tests.fixtures.catalog import write_raster
from tests.fixtures.stack import renderd_py

pytestmark = pytest.mark.slow

LAYERS = """
[catalog]
url = "sqlite://{dir}/catalog.sqlite"

[[layer]]
name = "temp"
kind = "raster"
collection = "temp"
keys = ["month"]
colormap = "viridis"
rescale = "0,100"
maxzoom = 8
attribution = "synthetic"
"""


def sst_like(path, month: int):
    """A float32 raster over 20W..40E, 0..60N (0.1 degree) with nodata where x + y < 150."""
    rows, cols = np.mgrid[0:600, 0:600]
    data = ((rows + cols) / 12.0 + month).astype(np.float32)
    data[rows + cols < 150] = -999.0
    write_raster(path, data[None], transform=from_origin(-20.0, 60.0, 0.1, 0.1), nodata=-999.0,
                 overviews=(2, 4))


def cli(stack, *args, timeout=120):
    r = subprocess.run(renderd_py() + [*args, "-c", str(stack.config)], capture_output=True, timeout=timeout,
                       cwd=str(stack.dir))
    assert r.returncode == 0, r.stderr.decode()
    return r


def rendered(stack) -> float:
    text = stack.get(stack.metrics_url).body.decode()
    m = re.search(r'^renderd_daemon_events_total\{event="rendered"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def raster_stack(stack_factory, tmp_path):
    s = stack_factory(start=False, layers=LAYERS.format(dir=tmp_path))
    sst_like(tmp_path / "temp_01.tif", 1)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "-q")
    return s.start()


def test_tile_sets_end_to_end(raster_stack, tmp_path):
    s = raster_stack
    path = "/tiles/temp/01/4/8/6.png"
    r = s.get(path)
    assert r.status == 200 and r.headers["x-cache"] == "RENDER", (r.status, r.body[:200])
    assert r.headers["content-type"] == "image/png" and r.body[:8] == b"\x89PNG\r\n\x1a\n"
    # the same bytes from the hot cache, from `render` and from an export
    for _ in range(50):
        again = s.get(path)
        if again.headers["x-cache"] == "HIT":
            break
        time.sleep(0.05)
    assert again.body == r.body and again.headers["x-cache"] == "HIT"
    out = tmp_path / "t.png"
    cli(s, "render", "temp", "4", "8", "6", "--key", "month=01", "-o", str(out))
    assert out.read_bytes() == r.body
    mb = tmp_path / "t.mbtiles"
    cli(s, "export", "--layer", "temp", "--key", "month=01", "--zoom", "4", "--bbox", "0,20,10,30",
        "-o", str(mb))
    with sqlite3.connect(mb) as db:
        (blob,) = db.execute("SELECT tile_data FROM tiles WHERE zoom_level=4 AND tile_column=8 "
                             "AND tile_row=?", (2 ** 4 - 1 - 6,)).fetchone()
    assert blob == r.body
    # a month not ingested: 404, and no render
    before = rendered(s)
    assert s.get("/tiles/temp/02/4/8/6.png").status == 404
    # ingested now: served without a restart, the documents too
    sst_like(tmp_path / "temp_02.tif", 2)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "--skip-existing", "-q")
    r2 = s.get("/tiles/temp/02/4/8/6.png")
    assert r2.status == 200 and r2.headers["x-cache"] == "RENDER" and r2.body != r.body
    assert rendered(s) == before + 1
    doc = json.loads(s.get("/datasets/temp.json").body)
    assert [d["tileset"] for d in doc["datasets"]] == ["temp/01", "temp/02"]
    meta = json.loads(s.get("/metadata/temp/02.json").body)
    assert meta["dtype"] == "float32" and meta["nodata"] == -999.0
    assert meta["bounds"] == pytest.approx([-20, 0, 40, 60])
    tj = json.loads(s.get("/tiles/temp/02.json").body)
    assert tj["tiles"] == [s.url + "tiles/temp/02/{z}/{x}/{y}.png"]
    assert tj["bounds"] == pytest.approx([-20, 0, 40, 60])
    layer_tj = json.loads(s.get("/tiles/temp.json").body)
    assert layer_tj["tiles"] == [s.url + "tiles/temp/{month}/{z}/{x}/{y}.png"] and layer_tj["keys"] == ["month"]


def test_many_requests_for_one_raster_metatile_render_it_once(raster_stack):
    s = raster_stack
    before = rendered(s)
    paths = [f"/tiles/temp/01/5/{16 + i % 8}/{8 + i // 8 % 8}.png" for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        got = list(pool.map(lambda p: s.get(p, timeout=60), paths))
    assert all(r.status in (200, 404) for r in got), {r.status for r in got}
    assert sum(r.status == 200 for r in got) > 150           # (the nodata corner is "no tile")
    assert rendered(s) == before + 1


def test_a_changed_file_is_rendered_again(raster_stack, tmp_path):
    s = raster_stack
    path = "/tiles/temp/01/3/4/3.png"
    first = s.get(path)
    assert first.status == 200
    time.sleep(1.1)                                  # (a new mtime, a newer ingest time)
    sst_like(tmp_path / "temp_01.tif", 40)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "-q")
    deadline = time.monotonic() + 30
    while True:
        r = s.get(path)
        if r.body != first.body or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status == 200 and r.body != first.body


def test_demo_page_picks_key_values(raster_stack, tmp_path):
    """The demo page lists a layer's key values from /datasets and shows
    the tile set named in the URL."""
    from tests.test_demo_page import browse
    s = raster_stack
    sst_like(tmp_path / "temp_02.tif", 2)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "--skip-existing", "-q")
    r = browse(s.url + "#temp%2F02/4/30/10", tmp_path, "--dump-dom", budget_ms=15000)
    dom = r.stdout
    assert "data-error" not in dom, re.findall(r'data-error="[^"]*"', dom)
    assert 'data-tileset="temp/02"' in dom
    assert re.search(r'<option value="temp/01">01</option>', dom)
    assert re.search(r'<option value="temp/02" selected="">02</option>', dom) or \
        re.search(r'<option value="temp/02"[^>]*>02</option>', dom)
    srcs = re.findall(r'<img[^>]+src="([^"]+)"[^>]+leaflet-tile-loaded', dom)
    assert srcs and all(src.startswith(s.url + "tiles/temp/02/4/") for src in srcs), srcs


WORLD_AND_TEMP = """
[catalog]
url = "{catalog}"

[[layer]]
name = "world"
style = "{style}"
maxzoom = 8
attribution = "Natural Earth"

[[layer]]
name = "temp"
kind = "raster"
collection = "temp"
keys = ["month"]
colormap = "viridis"
rescale = "0,100"
maxzoom = 8
"""


def test_a_vanished_file_is_503_and_other_layers_keep_working(stack_factory, tmp_path):
    from tests.fixtures.stack import WORLD_STYLE
    s = stack_factory(start=False, expect_errors=True, layers=WORLD_AND_TEMP.format(
        catalog=f"sqlite://{tmp_path}/catalog.sqlite", style=WORLD_STYLE))
    for month in (1, 2):
        sst_like(tmp_path / f"temp_0{month}.tif", month)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "-q")
    (tmp_path / "temp_02.tif").unlink()
    s.start()
    r = s.get("/tiles/temp/02/4/8/6.png")
    assert r.status == 503 and len(r.body) < 200, (r.status, r.body[:200])
    assert r.headers.get("retry-after")
    assert s.get("/tiles/temp/01/4/8/6.png").status == 200
    assert s.get("/tiles/world/2/1/1.png").status == 200
    log = (s.prefix / "logs" / "renderd.log").read_text()
    assert "temp_02.tif is gone" in log, "the logged reason names the file"


def test_postgresql_catalog_and_redis_store(stack_factory, tmp_path, pg_catalog_url, redis_url):
    """The shared parts: the catalog in PostgreSQL, the tiles in Redis."""
    s = stack_factory(start=False, store="redis", redis_url=redis_url,
                      layers=LAYERS.replace(f'sqlite://{{dir}}/catalog.sqlite', pg_catalog_url))
    sst_like(tmp_path / "temp_07.tif", 7)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "-q")
    s.start()
    r = s.get("/tiles/temp/07/4/8/6.png")
    assert r.status == 200 and r.headers["x-cache"] == "RENDER", (r.status, r.body[:200])
    out = tmp_path / "t.png"
    cli(s, "render", "temp/07", "4", "8", "6", "-o", str(out))
    assert out.read_bytes() == r.body
    assert s.get("/tiles/temp/08/4/8/6.png").status == 404
    doc = json.loads(s.get("/datasets/temp.json").body)
    assert [d["tileset"] for d in doc["datasets"]] == ["temp/07"]
