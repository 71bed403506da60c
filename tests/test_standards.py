"""The standard interfaces (renderd/nginx/standards.py, lua/renderd/standards.lua):
WMTS 1.0.0 RESTful capabilities checked with xmllint against the OGC
schemas, and read by GDAL's WMTS driver from the whole stack; OGC API -
Tiles documents and tiles through the Lua front, onto the same cache as
/tiles/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from renderd import config as _config
from renderd.nginx import write_support
from renderd.nginx.standards import (GOOGLE, WMTS_CAPABILITIES, matrix_limits, ogcapi_documents,
                                     web_mercator_quad, wmts_capabilities)
from renderd.tilemath import Meta, merc_bounds
from tests.test_lua_front import (FakeBroker, assert_tile, make_meta, purge, request,  # noqa: F401
                                  broker, disk_store, wait_xcache)

NS = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1",
      "xlink": "http://www.w3.org/1999/xlink"}
ROOT = Path(__file__).resolve().parents[1]


def make_cfg(broker: str = "tcp://127.0.0.1:5555", store: str = "/tmp/store"):
    return _config.parse({
        "daemon": {"broker": broker}, "store": {"path": store},
        "layer": [
            {"name": "world", "style": "world.xml", "maxzoom": 12, "description": "a <world> & more"},
            {"name": "sst", "kind": "raster", "collection": "sst", "keys": ["year", "month"], "maxzoom": 8,
             "bounds": [-20, 0, 40, 60], "scales": [1, 2]},
            {"name": "big", "style": "world.xml", "tile_size": 512, "minzoom": 2, "maxzoom": 5,
             "format": "jpeg80"},
        ]}, check_files=False)


def fill_dimensions(text: str, values: dict[str, list[list[str]]]) -> str:
    """What lua/renderd/standards.lua does with the catalog's combinations."""
    def layer(m: re.Match) -> str:
        combos = values.get(m.group(1), [])
        if not combos:
            return ""
        inner = re.sub(r"<Default>@RPY_DEFAULT:[\w-]+:(\d+)@</Default>",
                       lambda d: f"<Default>{combos[-1][int(d.group(1)) - 1]}</Default>", m.group(2))
        return re.sub(r"<Value>@RPY_VALUES:[\w-]+:(\d+)@</Value>",
                      lambda d: "".join(f"<Value>{v}</Value>"
                                        for v in sorted({c[int(d.group(1)) - 1] for c in combos})), inner)
    text = re.sub(r"<!--@RPY_LAYER:([\w-]+)@-->(.*?)<!--@RPY_END:\1@-->", layer, text, flags=re.S)
    return text.replace("@RPY_BASE@", "http://example.org")


# --- the capabilities against the OGC schemas ---------------------------------------

def wmts_schemas() -> Path:
    """The OGC WMTS 1.0 and OWS 1.1 schemas as the MapProxy package ships them."""
    if not shutil.which("xmllint"):
        pytest.skip("xmllint is not installed (libxml2-utils; run scripts/setup)")
    try:
        import mapproxy
    except ImportError:
        pytest.skip("the MapProxy package (OGC schemas) is not installed (run scripts/setup)")
    return Path(mapproxy.__file__).parent / "test" / "schemas"


def xmllint(doc: Path, schema: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["xmllint", "--noout", "--nonet", "--schema", str(schema), str(doc)],
                          capture_output=True, text=True)


def test_capabilities_validate_against_the_wmts_schema(tmp_path):
    """xmllint against the OGC's own schema files. Those of 2010 type the
    tile limits as positiveInteger although the standard's text says they
    run from 0 (a known erratum that no implementation can meet at row or
    column 0): the document with its TileMatrixSetLimits validates against
    the unchanged schemas without them, and whole against a copy in which
    only those four types are nonNegativeInteger."""
    schemas = wmts_schemas()
    text = fill_dimensions(wmts_capabilities(make_cfg()), {"sst": [["2024", "07"], ["2024", "08"]]})
    whole = tmp_path / "caps.xml"
    whole.write_text(text)
    without = tmp_path / "caps-nolimits.xml"
    without.write_text(re.sub(r"\s*<TileMatrixSetLimits>.*?</TileMatrixSetLimits>", "", text, flags=re.S))
    r = xmllint(without, schemas / "wmts" / "1.0" / "wmtsGetCapabilities_response.xsd")
    assert r.returncode == 0, r.stderr
    fixed = tmp_path / "schemas"
    shutil.copytree(schemas, fixed)
    xsd = fixed / "wmts" / "1.0" / "wmtsGetCapabilities_response.xsd"
    src = xsd.read_text()
    new = re.sub(r'(name="(Min|Max)Tile(Row|Col)" type=")positiveInteger', r"\1nonNegativeInteger", src)
    assert src.count("positiveInteger") - new.count('"positiveInteger') >= 4
    xsd.write_text(new)
    r = xmllint(whole, xsd)
    assert r.returncode == 0, r.stderr
    # a document breaking the schema is caught (the check checks)
    bad = tmp_path / "bad.xml"
    bad.write_text(text.replace("<ows:Identifier>world</ows:Identifier>", "", 1))
    assert xmllint(bad, xsd).returncode != 0


def test_capabilities_hold_what_gdal_and_qgis_read():
    root = ET.fromstring(fill_dimensions(wmts_capabilities(make_cfg()),
                                         {"sst": [["2023", "12"], ["2024", "07"], ["2024", "08"]]}))
    layers = {lyr.findtext("ows:Identifier", namespaces=NS): lyr
              for lyr in root.findall("w:Contents/w:Layer", NS)}
    assert list(layers) == ["world", "sst", "sst@2x", "big"]
    world, sst, sst2, big = layers.values()
    assert world.findtext("ows:Abstract", namespaces=NS) == "a <world> & more"
    assert world.findtext("w:Format", namespaces=NS) == "image/png"
    assert big.findtext("w:Format", namespaces=NS) == "image/jpeg"
    box = sst.find("ows:WGS84BoundingBox", NS)
    assert [box.findtext(f"ows:{c}Corner", namespaces=NS) for c in ("Lower", "Upper")] == ["-20.0 0.0",
                                                                                          "40.0 60.0"]
    url = sst.find("w:ResourceURL", NS).attrib
    assert url == {"format": "image/png", "resourceType": "tile",
                   "template": "http://example.org/tiles/sst/{year}/{month}/{TileMatrix}/{TileCol}/{TileRow}.png"}
    assert world.find("w:ResourceURL", NS).get("template") == \
        "http://example.org/tiles/world/{TileMatrix}/{TileCol}/{TileRow}.png"
    dims = {d.findtext("ows:Identifier", namespaces=NS): ([v.text for v in d.findall("w:Value", NS)],
                                                         d.findtext("w:Default", namespaces=NS))
            for d in sst.findall("w:Dimension", NS)}
    assert dims == {"year": (["2023", "2024"], "2024"), "month": (["07", "08", "12"], "08")}
    assert world.find("w:Dimension", NS) is None
    # the HiDPI tile set: a layer of 512 px tiles, the same Dimensions
    assert sst2.find("w:ResourceURL", NS).get("template") == \
        "http://example.org/tiles/sst/{year}/{month}/{TileMatrix}/{TileCol}/{TileRow}@2x.png"
    assert sst2.findtext("w:TileMatrixSetLink/w:TileMatrixSet", namespaces=NS) == f"{GOOGLE}_512"
    assert len(sst2.findall("w:Dimension/w:Value", NS)) == 5
    assert sst.find("w:Style", NS).get("isDefault") == "true"
    # the layer's zooms, and its bounds' rows and columns at each
    link = sst.find("w:TileMatrixSetLink", NS)
    assert link.findtext("w:TileMatrixSet", namespaces=NS) == GOOGLE
    limits = [[int(e.text) for e in lim] for lim in link.findall("w:TileMatrixSetLimits/w:TileMatrixLimits", NS)]
    assert [lim[0] for lim in limits] == list(range(0, 9))
    assert limits[4] == [4, 4, 7, 7, 9]          # z4: rows 4..7, columns 7..9 hold 20W..40E, 0..60N
    assert big.findtext("w:TileMatrixSetLink/w:TileMatrixSet", namespaces=NS) == f"{GOOGLE}_512"
    # the tile matrix sets: WebMercatorQuad's numbers, to the highest zoom served
    sets = {s.findtext("ows:Identifier", namespaces=NS): s for s in root.findall("w:Contents/w:TileMatrixSet", NS)}
    assert list(sets) == [GOOGLE, f"{GOOGLE}_512"]
    g = sets[GOOGLE]
    assert g.findtext("ows:SupportedCRS", namespaces=NS) == "urn:ogc:def:crs:EPSG::3857"
    assert g.findtext("w:WellKnownScaleSet", namespaces=NS) == "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible"
    matrices = g.findall("w:TileMatrix", NS)
    assert len(matrices) == 13
    m3 = matrices[3]
    assert float(m3.findtext("w:ScaleDenominator", namespaces=NS)) == pytest.approx(559082264.0287178 / 8)
    assert m3.findtext("w:TopLeftCorner", namespaces=NS) == "-20037508.342789244 20037508.342789244"
    assert [m3.findtext(f"w:{k}", namespaces=NS) for k in ("TileWidth", "MatrixWidth", "MatrixHeight")] == \
        ["256", "8", "8"]
    m512 = sets[f"{GOOGLE}_512"].findall("w:TileMatrix", NS)
    assert len(m512) == 9 and m512[3].findtext("w:TileWidth", namespaces=NS) == "512"
    assert float(m512[3].findtext("w:ScaleDenominator", namespaces=NS)) == pytest.approx(559082264.0287178 / 16)
    assert root.find("w:ServiceMetadataURL", NS).get(f"{{{NS['xlink']}}}href") == \
        "http://example.org/wmts/1.0.0/WMTSCapabilities.xml"


def test_a_layer_with_keys_and_no_tile_set_is_left_out():
    root = ET.fromstring(fill_dimensions(wmts_capabilities(make_cfg()), {}))
    assert [lyr.findtext("ows:Identifier", namespaces=NS)
            for lyr in root.findall("w:Contents/w:Layer", NS)] == ["world", "big"]


# --- the OGC API documents ------------------------------------------------------------

def test_ogcapi_documents():
    docs = ogcapi_documents(make_cfg())
    base = "@RPY_BASE@/ogcapi/"
    rels = {link["rel"]: link["href"] for link in docs["index"]["links"]}
    assert rels["conformance"] == base + "conformance" and rels["data"] == base + "collections"
    assert rels["http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes"] == base + "tileMatrixSets"
    assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core" in docs["conformance"]["conformsTo"]
    assert rels["service-desc"] == base + "api"
    # layers of 512 px tiles are not WebMercatorQuad's: WMTS only
    assert [c["id"] for c in docs["collections"]["collections"]] == ["world", "sst"]
    ts = docs["collections/sst/map/tiles/WebMercatorQuad"]
    assert ts["dataType"] == "map" and ts["crs"] == "http://www.opengis.net/def/crs/EPSG/0/3857"
    assert ts["tileMatrixSetURI"] == "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
    links = {link["rel"]: link for link in ts["links"]}
    assert links["self"]["href"] == base + "collections/sst/map/tiles/WebMercatorQuad"
    assert links["http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"]["href"] == \
        base + "tileMatrixSets/WebMercatorQuad"
    assert links["item"] == {
        "href": base + "collections/sst/map/tiles/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}"
                       "?year={year}&month={month}",
        "rel": "item", "type": "image/png", "title": "sst tiles", "templated": True,
        "variables": {"year": {"type": "string", "description": "value of the catalog key year"},
                      "month": {"type": "string", "description": "value of the catalog key month"}}}
    assert ts["tileMatrixSetLimits"][4] == {"tileMatrix": "4", "minTileRow": 4, "maxTileRow": 7,
                                            "minTileCol": 7, "maxTileCol": 9}
    assert docs["collections/world/map/tiles/WebMercatorQuad"]["links"][-1]["href"].endswith(
        "/{tileMatrix}/{tileRow}/{tileCol}")
    assert docs["collections/world/map/tiles"]["tilesets"][0]["links"][0]["href"] == \
        base + "collections/world/map/tiles/WebMercatorQuad"
    tms = docs["tileMatrixSets/WebMercatorQuad"]
    assert {k: tms[k] for k in web_mercator_quad() if k != "tileMatrices"} == \
        {k: v for k, v in web_mercator_quad().items() if k != "tileMatrices"}
    assert all(m.items() >= w.items() for m, w in zip(tms["tileMatrices"], web_mercator_quad()["tileMatrices"]))
    assert (tms["type"], tms["identifier"], tms["tileMatrices"][3]["identifier"]) == \
        ("TileMatrixSetType", "WebMercatorQuad", "3")      # (TMS 1.0's names, for GDAL 3.6)
    assert list(matrix_limits(make_cfg().layer("world")))[1] == (1, 0, 1, 0, 1)


def test_the_api_definition_is_valid_openapi():
    validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator (run scripts/setup)")
    api = ogcapi_documents(make_cfg())["api"]
    validator.validate(api)
    tile = api["paths"]["/collections/{collectionId}/map/tiles/{tileMatrixSetId}/{tileMatrix}/{tileRow}/{tileCol}"]
    params = {p["name"]: p for p in tile["get"]["parameters"]}
    assert params["collectionId"]["schema"]["enum"] == ["world", "sst"]
    assert params["month"]["in"] == "query" and set(tile["get"]["responses"]["200"]["content"]) == {"image/png"}


# --- through the Lua front ----------------------------------------------------------------

SST_COMBOS = [["2024", "07"], ["2024", "08"]]


@pytest.fixture
def std_front(nginx_factory, disk_store, broker, tmp_path):
    """nginx with the runtime JSON and documents nginx-conf writes for
    make_cfg(), the fake broker and a disk store."""
    broker.store = disk_store
    broker.catalog = lambda q: {"layer": q["layer"], "keys": ["year", "month"], "values": SST_COMBOS,
                                "version": 1}
    d = tmp_path / "conf"
    write_support(make_cfg(broker.endpoint, str(disk_store.path)), d)
    rt = json.loads((d / "renderd-py.json").read_text())
    assert rt["docs_dir"] == str(d) and (d / WMTS_CAPABILITIES).is_file()
    return nginx_factory(rt), disk_store, broker


def caps(ng) -> ET.Element:
    r = request(ng.port, "/wmts/1.0.0/WMTSCapabilities.xml")
    assert r.status == 200 and r.h("content-type") == "application/xml", (r.status, r.body)
    return ET.fromstring(r.body)


def months(root: ET.Element) -> list[str]:
    """The month values of the first layer with a month Dimension."""
    for lyr in root.findall("w:Contents/w:Layer", NS):
        dim = lyr.find("w:Dimension[ows:Identifier='month']", NS)
        if dim is not None:
            return [v.text for v in dim.findall("w:Value", NS)]
    return []


def test_wmts_capabilities_through_the_front(std_front):
    ng, store, broker = std_front
    root = caps(ng)
    assert months(root) == ["07", "08"]
    assert root.find("w:Contents/w:Layer/w:ResourceURL", NS).get("template") == \
        f"http://127.0.0.1:{ng.port}/tiles/world/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"
    # an ingest (its purge of the layer) shows at once
    broker.catalog = lambda q: {"layer": "sst", "keys": ["year", "month"],
                                "values": SST_COMBOS + [["2024", "09"]], "version": 2}
    assert purge(ng, "", layer="sst/2024/09")[0] == 200
    for _ in range(4):      # (each nginx worker asks for itself)
        assert months(caps(ng)) == ["07", "08", "09"]
    assert request(ng.port, "/wmts/1.0.0/WMTSCapabilities.xml", method="POST").status == 405
    assert broker.renders() == []


def test_wmts_capabilities_when_the_daemon_cannot_say(nginx_factory, disk_store, broker, tmp_path):
    broker.catalog = None
    d = tmp_path / "conf"
    write_support(make_cfg(broker.endpoint, str(disk_store.path)), d)
    rt = dict(json.loads((d / "renderd-py.json").read_text()), status_timeout=0.3)
    ng = nginx_factory(rt, expect_errors=True)
    r = request(ng.port, "/wmts/1.0.0/WMTSCapabilities.xml")
    assert (r.status, r.h("retry-after")) == (503, "5"), r.body


def test_ogcapi_through_the_front(std_front):
    ng, store, broker = std_front
    for path in ("/ogcapi/", "/ogcapi/conformance", "/ogcapi/collections", "/ogcapi/collections/world",
                 "/ogcapi/collections/world/map/tiles", "/ogcapi/collections/world/map/tiles/WebMercatorQuad",
                 "/ogcapi/tileMatrixSets", "/ogcapi/tileMatrixSets/WebMercatorQuad?f=json", "/ogcapi/api"):
        r = request(ng.port, path)
        want = "application/vnd.oai.openapi+json;version=3.0" if path.endswith("/api") else "application/json"
        assert (r.status, r.h("content-type")) == (200, want), (path, r.status, r.body)
        doc = json.loads(r.body)
        assert "@RPY_BASE@" not in r.body.decode()
        for link in doc.get("links", []):
            assert link["href"].startswith(f"http://127.0.0.1:{ng.port}/ogcapi/"), (path, link)
    # a tile: the same tile set, cache and bytes as /tiles/world/5/9/17.png
    meta = Meta(5, 8, 16, 8)
    store.put_metatile("world", *make_meta("world", meta))
    assert_tile(request(ng.port, "/ogcapi/collections/world/map/tiles/WebMercatorQuad/5/17/9"), 5, 9, 17, "STORE")
    r = wait_xcache(ng.port, "/ogcapi/collections/world/map/tiles/WebMercatorQuad/5/23/15", "HIT")
    assert_tile(r, 5, 15, 23, "HIT")
    assert_tile(request(ng.port, "/tiles/world/5/15/23.png"), 5, 15, 23, "HIT")
    # a layer with keys: a value for each as a query parameter
    r = request(ng.port, "/ogcapi/collections/sst/map/tiles/WebMercatorQuad/5/17/9?month=07&year=2024")
    assert_tile(r, 5, 9, 17, "RENDER", layer="sst/2024/07")
    (msg,) = broker.renders()
    assert msg[3:5] == [b"sst/2024/07", b"5/9/17"]
    tiles = "/ogcapi/collections/{}/map/tiles/{}/{}"
    for path, status in (
            (tiles.format("nope", "WebMercatorQuad", "5/17/9"), 404),        # unknown collection
            (tiles.format("big", "WebMercatorQuad", "3/1/1"), 404),          # not in WebMercatorQuad
            (tiles.format("world", "WorldCRS84Quad", "5/17/9"), 404),        # unknown tile matrix set
            (tiles.format("world", "WebMercatorQuad", "13/0/0"), 404),       # tile matrix outside the layer
            (tiles.format("world", "WebMercatorQuad", "5/32/0"), 404),       # row outside the matrix
            (tiles.format("world", "WebMercatorQuad", "5/0/32"), 404),       # column outside the matrix
            (tiles.format("world", "WebMercatorQuad", "5/x/0"), 400),
            (tiles.format("world", "WebMercatorQuad", "5/1234567890123/0"), 400),
            (tiles.format("sst", "WebMercatorQuad", "5/17/9?year=2024"), 400),                 # a key missing
            (tiles.format("sst", "WebMercatorQuad", "5/17/9?year=2024&month=%2e%2e"), 400),
            (tiles.format("sst", "WebMercatorQuad", "5/17/9?year=1999&month=07"), 404),        # not in the catalog
            ("/ogcapi/collections/nope", 404), ("/ogcapi/collections/world/map/tiles/Other", 404),
            ("/ogcapi/tileMatrixSets/WorldCRS84Quad", 404),
            ("/ogcapi/collections/world.json", 404), ("/ogcapi/collections//world", 404)):
        r = request(ng.port, path)
        assert r.status == status, (path, r.status, r.body)
        assert len(r.body) < 100 and r.h("content-type") == "text/plain; charset=utf-8", (path, r.body)
    assert request(ng.port, "/ogcapi/collections", method="DELETE").status == 405
    assert len(broker.renders()) == 1


# --- GDAL's WMTS driver against the whole stack -----------------------------------------

WORLD_LAYER = """
[[layer]]
name = "world"
style = "{style}"
maxzoom = 8
scales = [1, 2]
"""


def gdal(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """A GDAL command-line tool, its cache of WMTS tiles under ``tmp``."""
    if not shutil.which(args[0]):
        pytest.skip(f"{args[0]} is not installed (gdal-bin; run scripts/setup)")
    env = dict(os.environ, GDAL_DEFAULT_WMS_CACHE_PATH=str(tmp / "gdalwmscache"))
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp, env=env)
    assert r.returncode == 0, r.stderr
    return r


def decode(data: bytes) -> np.ndarray:
    import io

    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


@pytest.mark.slow
def test_gdal_wmts_driver_reads_the_stack(stack_factory, tmp_path):
    import rasterio

    from tests.fixtures.stack import WORLD_STYLE
    from tests.test_raster_stack import LAYERS, cli, sst_like
    layers = LAYERS.format(dir=tmp_path) + "bounds = [-20, 0, 40, 60]\n" + WORLD_LAYER.format(style=WORLD_STYLE)
    s = stack_factory(start=False, layers=layers)
    sst_like(tmp_path / "temp_01.tif", 1)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "-q")
    s.start()
    url = s.url + "wmts/1.0.0/WMTSCapabilities.xml"
    info = gdal(tmp_path, "gdalinfo", f"WMTS:{url}").stdout
    assert f"SUBDATASET_1_NAME=WMTS:{url},layer=temp" in info
    assert f"SUBDATASET_2_NAME=WMTS:{url},layer=world" in info
    assert f"SUBDATASET_3_NAME=WMTS:{url},layer=world@2x" in info
    info = gdal(tmp_path, "gdalinfo", "-json", f"WMTS:{url},layer=temp").stdout
    corners = json.loads(info)["wgs84Extent"]["coordinates"][0]
    assert min(c[0] for c in corners) == pytest.approx(-20, abs=0.05)
    assert max(c[1] for c in corners) == pytest.approx(60, abs=0.05)
    # an area of two tiles at zoom 3: GDAL's pixels are those of our tiles,
    # which it fetched through /tiles/ (rendered once, then served from the
    # cache); the same area from the HiDPI layer: twice the pixels
    w, _, _, n = merc_bounds(3, 3, 3)
    _, s_, e, _ = merc_bounds(3, 4, 3)
    for layer, suffix, side in (("world", "", 256), ("world@2x", "@2x", 512)):
        out = tmp_path / f"{layer}.tif"
        gdal(tmp_path, "gdal_translate", "-q", "-oo", "ZOOM_LEVEL=3", "-projwin", repr(w), repr(n), repr(e),
             repr(s_), f"WMTS:{url},layer={layer}", str(out))
        with rasterio.open(out) as ds:
            got = np.moveaxis(ds.read(), 0, -1)
        left, right = s.get(f"/tiles/world/3/3/3{suffix}.png"), s.get(f"/tiles/world/3/4/3{suffix}.png")
        assert {left.headers["x-cache"], right.headers["x-cache"]} <= {"HIT", "STORE"}
        assert got.shape == (side, 2 * side, 4)
        assert np.array_equal(got, np.concatenate([decode(left.body), decode(right.body)], axis=1))
    # GDAL's OGC API driver: the collection's tiles through /ogcapi/, the same
    # pixels (GDAL 3.6 takes the collection's CRS84 extent for metres: give it
    # the extent in the tile matrix set's CRS)
    half = 20037508.342789244
    extent = [f"{k}={v!r}" for k, v in (("MINX", -half), ("MINY", -half), ("MAXX", half), ("MAXY", half))]
    out = tmp_path / "ogc.tif"
    w, s_, e, n = merc_bounds(3, 4, 3)
    gdal(tmp_path, "gdal_translate", "-q", *(a for kv in extent for a in ("-oo", kv)), "-oo", "TILEMATRIX=3",
         "-projwin", repr(w), repr(n), repr(e), repr(s_), f"OGCAPI:{s.url}ogcapi/collections/world", str(out))
    with rasterio.open(out) as ds:
        got = np.moveaxis(ds.read(), 0, -1)
    assert np.array_equal(got, decode(s.get("/tiles/world/3/4/3.png").body))
    # the layer with keys at its Dimension's default, the month ingested
    out = tmp_path / "temp.tif"
    gdal(tmp_path, "gdal_translate", "-q", "-oo", "ZOOM_LEVEL=4", f"WMTS:{url},layer=temp", str(out))
    with rasterio.open(out) as ds:
        assert ds.read(4).max() == 255
    assert s.get("/tiles/temp/01/4/8/6.png").headers["x-cache"] in ("HIT", "STORE")
    # a second month ingested: in the capabilities without a restart
    sst_like(tmp_path / "temp_02.tif", 2)
    cli(s, "ingest", str(tmp_path / "temp_{month}.tif"), "--collection", "temp", "--skip-existing", "-q")
    root = ET.fromstring(s.get("/wmts/1.0.0/WMTSCapabilities.xml").body)
    assert months(root) == ["01", "02"]
    assert root.findtext("w:Contents/w:Layer/w:Dimension/w:Default", namespaces=NS) == "02"
    assert s.get("/wmts/1.0.0/Other.xml").status == 404
