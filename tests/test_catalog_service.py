"""The CATALOG questions the nginx front asks the daemon: answered by the
broker from a real catalog (SQLite and PostgreSQL) filled by ingest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.transform import from_origin

from renderd import config, protocol as p
from renderd.broker import Broker
from renderd.catalog import open_catalog
from renderd.tools.ingest import ingest
from tests.fixtures.catalog import write_raster
from tests.test_broker import Clock


def make_cfg(url: str):
    return config.parse({"catalog": {"url": url}, "layer": [
        {"name": "w", "style": "x.xml"},
        {"name": "sst", "kind": "raster", "collection": "sst", "keys": ["month"], "maxzoom": 8,
         "where": {"var": "sst"}, "attribution": "test"},
        {"name": "flat", "kind": "raster", "collection": "sst", "where": {"var": "sst"}},
    ]}, check_files=False, env={})


@pytest.fixture
def filled(tmp_path, catalog_url):
    data = np.arange(100 * 100, dtype=np.float32).reshape(1, 100, 100)
    for month, west in (("07", 10.0), ("08", 20.0)):
        write_raster(tmp_path / f"sst_{month}_sst.tif", data, transform=from_origin(west, 50, 0.1, 0.1),
                     nodata=-1.0)
    write_raster(tmp_path / "sst_07_ice.tif", data, transform=from_origin(0, 50, 0.1, 0.1))
    with open_catalog(catalog_url) as cat:
        ingest(cat, str(tmp_path / "sst_{month}_{var}.tif"), "sst")
    return catalog_url


def ask(broker: Broker, sent: list, question: dict | bytes) -> p.Reply:
    raw = question if isinstance(question, bytes) else json.dumps(question).encode()
    broker.handle([b"front", p.CLIENT, p.CATALOG, b"q1", raw])
    return p.decode_reply(sent[-1][1:])


@pytest.fixture
def broker(filled):
    sent: list = []
    b = Broker(make_cfg(filled), sent.append, clock=Clock(), kill=lambda w: None, pool="local")
    yield b, sent
    b.catalog.close()


def test_keys_datasets_metadata_tilejson(broker):
    b, sent = broker
    r = ask(b, sent, {"op": "keys", "layer": "sst"})
    assert r.status == p.OK
    keys = json.loads(r.info)
    assert (keys["keys"], keys["values"]) == (["month"], [["07"], ["08"]])   # where: no ice
    assert keys["version"] > 0

    doc = json.loads(ask(b, sent, {"op": "datasets", "layer": "sst", "where": {"month": "08"}}).info)
    assert doc["total"] == 1 and doc["page"] == 1
    (ds,) = doc["datasets"]
    assert ds["keys"] == {"month": "08", "var": "sst"} and ds["tileset"] == "sst/08"
    assert ds["tilejson"] == "tiles/sst/08.json" and ds["metadata"] == "metadata/sst/08.json"
    assert ds["bounds"] == pytest.approx([20, 40, 30, 50])
    page2 = json.loads(ask(b, sent, {"op": "datasets", "layer": "sst", "limit": 1, "page": 2}).info)
    assert [d["keys"]["month"] for d in page2["datasets"]] == ["08"] and page2["total"] == 2

    meta = json.loads(ask(b, sent, {"op": "metadata", "layer": "sst", "values": ["07"]}).info)
    assert meta["keys"] == {"month": "07"} and meta["dtype"] == "float32" and meta["nodata"] == -1.0
    assert meta["bounds"] == pytest.approx([10, 40, 20, 50]) and meta["crs"] == "EPSG:4326"
    (st,) = meta["statistics"]
    assert (st["min"], st["max"]) == (0.0, 9999.0) and st["percentiles"]["50"] == pytest.approx(5000, abs=2)
    assert meta["footprint"]["type"] in ("Polygon", "MultiPolygon")

    tj = json.loads(ask(b, sent, {"op": "tilejson", "layer": "sst", "values": ["08"]}).info)
    assert tj["tilejson"] == "3.0.0" and tj["name"] == "sst/08" and tj["attribution"] == "test"
    assert tj["tiles"] == ["@RPY_BASE@/tiles/sst/08/{z}/{x}/{y}.png"]
    assert tj["bounds"] == pytest.approx([20, 40, 30, 50]) and tj["maxzoom"] == 8

    # a layer without keys: one tile set, a mosaic of both months
    flat = json.loads(ask(b, sent, {"op": "metadata", "layer": "flat", "values": []}).info)
    assert len(flat["datasets"]) == 2 and flat["bounds"] == pytest.approx([10, 40, 30, 50])


def test_what_the_catalog_does_not_hold_and_bad_questions(broker):
    b, sent = broker
    for q in ({"op": "metadata", "layer": "sst", "values": ["09"]},
              {"op": "tilejson", "layer": "sst", "values": ["09"]}):
        doc = json.loads(ask(b, sent, q).info)
        assert doc == {"status": 404, "error": "sst/09: no such datasets"}
    for q, why in (({"op": "nope", "layer": "sst"}, b"unknown CATALOG question"),
                   ({"op": "keys", "layer": "w"}, b"not a raster layer"),
                   ({"op": "keys", "layer": "x"}, b"unknown layer"),
                   ({"op": "keys"}, b"names no layer"),
                   ({"op": "metadata", "layer": "sst", "values": ["07", "x"]}, b"takes 1 key values"),
                   ({"op": "metadata", "layer": "sst", "values": [".."]}, b"is not valid"),
                   ({"op": "datasets", "layer": "sst", "limit": 0}, b"limit must be"),
                   ({"op": "datasets", "layer": "sst", "where": ["x"]}, b"where must be"),
                   (b"not json", b"not JSON"), (b"[1]", b"not an object")):
        r = ask(b, sent, q)
        assert r.status == p.INVALID and why in r.info, (q, r.info)


def test_no_catalog_yet_means_no_datasets(tmp_path):
    sent: list = []
    b = Broker(make_cfg(f"sqlite://{tmp_path / 'none.sqlite'}"), sent.append, clock=Clock(),
               kill=lambda w: None, pool="local")
    assert json.loads(ask(b, sent, {"op": "keys", "layer": "sst"}).info)["values"] == []
    assert json.loads(ask(b, sent, {"op": "datasets", "layer": "sst"}).info)["total"] == 0
    assert not (tmp_path / "none.sqlite").exists()      # asking makes no catalog


def test_an_ingest_shows_at_once(broker, tmp_path):
    b, sent = broker
    write_raster(tmp_path / "sst_09_sst.tif", np.ones((1, 10, 10), np.float32),
                 transform=from_origin(30, 50, 0.1, 0.1))
    assert json.loads(ask(b, sent, {"op": "keys", "layer": "sst"}).info)["values"] == [["07"], ["08"]]
    with open_catalog(b.cfg.catalog.url) as cat:
        ingest(cat, str(tmp_path / "sst_{month}_{var}.tif"), "sst", skip_existing=True)
    assert json.loads(ask(b, sent, {"op": "keys", "layer": "sst"}).info)["values"] == [["07"], ["08"], ["09"]]
