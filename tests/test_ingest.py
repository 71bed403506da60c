"""``ingest`` and ``datasets`` against real files: synthetic GeoTIFFs written
with rasterio at test time, on SQLite and on the real PostgreSQL; headers,
bounds and footprints, statistics against numpy over the whole array, the
windows a large raster is read in, {key} patterns, re-ingest marking stored
metatiles stale in a real disk store, and the command lines' exit codes and
one-line messages."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform, transform_bounds

from renderd import config as _config
from renderd.catalog import open_catalog
from renderd.catalog.describe import describe
from renderd.catalog.pattern import parse_pattern
from renderd.catalog.stats import FINE_BINS, HIST_BINS, chunk_shape, chunk_windows, compute_stats
from renderd.cli.main import main
from renderd.errors import IngestError
from renderd.store.disk import DiskStore
from renderd.tilemath import Meta, metatiles_in_bbox
from renderd.tilesets import layer_tileset, name as tileset_name, split as split_tileset
from renderd.tools.ingest import Restale, ingest, merc_boxes, stored_metatiles
from tests.fixtures.catalog import write_raster
from tests.fixtures.store import make_index
from tests.test_tools_purge import FakePurge, fake_nginx  # noqa: F401  (a fixture)

RNG = np.random.default_rng(7)
UTM = from_origin(400000.0, 5500000.0, 30.0, 30.0)   # EPSG:32633, about 13.6E 49.6N


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout, and stderr without the progress lines."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    err = "".join(line for line in err.splitlines(True) if not line.startswith("progress: "))
    return e.value.code or 0, out, err


def valid_values(data: np.ndarray, band: int, valid: np.ndarray | None = None, nodata=None) -> np.ndarray:
    v = data[band]
    keep = np.isfinite(v) if v.dtype.kind == "f" else np.ones(v.shape, bool)
    if nodata is not None:
        keep &= v != nodata
    if valid is not None:
        keep &= valid
    return v[keep].astype(np.float64)


def assert_stats_match(s, v: np.ndarray, exact_percentiles: bool) -> None:
    assert s.count == v.size
    assert s.min == v.min() and s.max == v.max()
    assert s.mean == pytest.approx(v.mean(), rel=1e-12, abs=1e-12)
    assert s.stdev == pytest.approx(v.std(), rel=1e-9, abs=1e-12)
    assert sum(s.counts) == v.size and len(s.counts) == HIST_BINS
    ref = np.histogram(v, HIST_BINS, (v.min(), v.max()))[0]
    # bins agree but for values on an edge that float rounding puts on its other side
    assert np.abs(np.array(s.counts) - ref).sum() <= 0.001 * v.size
    fine = (v.max() - v.min()) / FINE_BINS
    for p in range(1, 100):
        want = np.percentile(v, p)
        if exact_percentiles:
            assert s.percentiles[p] == want, p
        else:
            assert abs(s.percentiles[p] - want) <= fine, p


# --- statistics ---------------------------------------------------------------

def test_uint8_rgb_statistics_exact(tmp_path):
    data = RNG.integers(0, 256, (3, 300, 500)).astype(np.uint8)
    data[2] //= 4                          # another range per band
    ds = describe(write_raster(tmp_path / "rgb.tif", data), "c", {})
    assert (ds.bands, ds.dtype, ds.nodata, ds.valid_share) == (3, "uint8", None, 1.0)
    for b in range(3):
        assert_stats_match(ds.stats[b], valid_values(data, b), exact_percentiles=True)


def test_float32_with_nodata_and_nan_statistics(tmp_path):
    data = RNG.normal(280.0, 15.0, (1, 400, 600)).astype(np.float32)
    data[0, :50, :] = -9999.0
    data[0, 200:210, 300:320] = np.nan
    ds = describe(write_raster(tmp_path / "f.tif", data, nodata=-9999.0), "c", {})
    v = valid_values(data, 0, nodata=-9999.0)
    assert_stats_match(ds.stats[0], v, exact_percentiles=False)
    assert ds.nodata == -9999.0
    # a NaN pixel is no valid pixel either
    assert ds.valid_share == pytest.approx((400 * 600 - 50 * 600 - 200) / (400 * 600))


def test_nan_nodata(tmp_path):
    data = RNG.normal(0, 1, (1, 100, 100)).astype(np.float32)
    data[0, :10] = np.nan
    ds = describe(write_raster(tmp_path / "n.tif", data, nodata=float("nan")), "c", {})
    assert ds.stats[0].count == 9000 and np.isnan(ds.nodata)
    assert ds.valid_share == pytest.approx(0.9)


def test_internal_mask_excludes_pixels(tmp_path):
    data = RNG.integers(0, 1000, (2, 256, 384)).astype(np.int16)
    data[:, :, :100] = 30000       # under the mask: must not count
    valid = np.ones((256, 384), bool)
    valid[:, :100] = False
    ds = describe(write_raster(tmp_path / "m.tif", data, mask=valid), "c", {})
    for b in range(2):
        assert_stats_match(ds.stats[b], valid_values(data, b, valid), exact_percentiles=True)
    assert ds.valid_share == pytest.approx(284 / 384)
    with rasterio.open(tmp_path / "m.tif") as src:
        assert rasterio.enums.MaskFlags.per_dataset in src.mask_flag_enums[0]


def test_wide_integer_range_percentiles_within_a_bin(tmp_path):
    data = RNG.integers(-2_000_000, 2_000_000, (1, 200, 300)).astype(np.int32)
    ds = describe(write_raster(tmp_path / "w.tif", data), "c", {})
    assert_stats_match(ds.stats[0], valid_values(data, 0), exact_percentiles=False)


def test_all_nodata_band(tmp_path):
    data = np.zeros((1, 64, 64), np.uint8)
    ds = describe(write_raster(tmp_path / "z.tif", data, nodata=0), "c", {})
    assert ds.stats[0].count == 0 and ds.valid_share == 0.0 and ds.footprint is None


def test_a_large_raster_is_read_in_bounded_windows(tmp_path):
    data = RNG.normal(0, 1, (1, 1500, 2100)).astype(np.float32)
    data[0, :, :700] = -1.0
    path = write_raster(tmp_path / "big.tif", data, nodata=-1.0, block=256)
    seen = []
    max_bytes = 4 << 20
    ds = describe(path, "c", {}, max_bytes=max_bytes, on_window=seen.append)
    with rasterio.open(path) as src:
        per_pixel = 1 * (4 + 1) + 24
        want = chunk_windows(src.width, src.height, src.block_shapes[0], max_bytes // per_pixel)
    assert len(want) > 20
    assert seen == want + want                     # pass one, then pass two, same windows
    for w in want:
        assert w.width * w.height * per_pixel <= max_bytes
        assert w.col_off % 256 == 0 and w.row_off % 256 == 0
    cover = np.zeros((1500, 2100), np.int32)
    for w in want:
        cover[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (cover == 1).all()
    assert_stats_match(ds.stats[0], valid_values(data, 0, nodata=-1.0), exact_percentiles=False)


def test_a_small_raster_is_read_once(tmp_path):
    seen = []
    describe(write_raster(tmp_path / "s.tif", np.ones((1, 50, 50), np.uint8)), "c", {}, on_window=seen.append)
    assert len(seen) == 1


@pytest.mark.parametrize("shape, block, budget, want", [
    ((2000, 1000), (256, 256), 10 ** 9, (1000, 2000)),   # all of it
    ((2000, 1000), (256, 256), 1_100_000, (512, 2000)),  # whole rows of blocks
    ((2000, 1000), (256, 256), 200_000, (256, 768)),     # blocks across one block row
    ((2000, 1000), (1, 2000), 50_000, (25, 2000)),       # strips: rows at a time
    ((100_000, 10), (1, 100_000), 30_000, (1, 30_000)),  # one strip wider than the budget
    ((2000, 2000), (1024, 1024), 100_000, (97, 1024)),   # a block larger than the budget
])
def test_chunk_shape(shape, block, budget, want):
    w, h = shape
    got = chunk_shape(w, h, block, budget)
    assert got == want
    assert got[0] * got[1] <= max(budget, got[1])


def test_statistics_from_an_overview_for_very_large_files(tmp_path):
    data = RNG.integers(0, 200, (1, 512, 512)).astype(np.uint8)
    path = write_raster(tmp_path / "o.tif", data, overviews=(2, 4))
    seen = []
    ds = describe(path, "c", {}, max_pixels=300 * 300, on_window=seen.append)
    assert ds.metadata["ingest"]["stats"] == "overview 1/2"
    assert ds.overviews == (2, 4)
    assert ds.stats[0].count == 256 * 256
    assert all(w.width <= 256 and w.height <= 256 for w in seen)


# --- headers, bounds, footprints ----------------------------------------------

def test_utm_header_bounds_and_footprint(tmp_path):
    data = np.zeros((1, 600, 800), np.uint16)
    data[0, 100:400, 200:700] = RNG.integers(1, 5000, (300, 500))
    path = write_raster(tmp_path / "utm.tif", data, crs="EPSG:32633", transform=UTM, nodata=0)
    ds = describe(path, "c", {"date": "2020"})
    assert ds.crs == "EPSG:32633"
    assert ds.transform == tuple(UTM)[:6]
    assert (ds.width, ds.height, ds.block, ds.overviews) == (800, 600, (256, 256), ())
    assert ds.bounds == (400000.0, 5482000.0, 424000.0, 5500000.0)
    assert ds.wgs84_bounds == pytest.approx(transform_bounds("EPSG:32633", "EPSG:4326", *ds.bounds,
                                                             densify_pts=21))
    assert ds.valid_share == pytest.approx(300 * 500 / (600 * 800))
    assert ds.path == str(tmp_path / "utm.tif") and ds.size == os.path.getsize(path)
    from shapely.geometry import MultiPoint, shape
    foot = shape(ds.footprint)
    assert foot.is_valid
    rows, cols = np.nonzero(data[0])
    xs, ys = rasterio.transform.xy(UTM, rows[::97], cols[::97])
    lon, lat = transform("EPSG:32633", "EPSG:4326", xs, ys)
    assert foot.contains(MultiPoint(list(zip(lon, lat))))       # every valid pixel inside
    w, s, e, n = ds.wgs84_bounds
    assert foot.area < 0.45 * (e - w) * (n - s)                 # and not the whole raster


def test_footprint_of_two_parts(tmp_path):
    data = np.zeros((1, 512, 512), np.uint8)
    data[0, 10:100, 10:100] = 5
    data[0, 400:500, 300:510] = 7
    ds = describe(write_raster(tmp_path / "two.tif", data, nodata=0), "c", {})
    assert ds.footprint["type"] == "MultiPolygon"
    assert len(ds.footprint["coordinates"]) == 2


def test_no_stats_reads_headers_and_a_decimated_mask(tmp_path):
    data = np.zeros((1, 600, 800), np.uint16)
    data[0, 100:400, 200:700] = 9
    path = write_raster(tmp_path / "utm.tif", data, crs="EPSG:32633", transform=UTM, nodata=0)
    seen = []
    ds = describe(path, "c", {}, stats=False, on_window=seen.append)
    assert ds.stats == () and seen == []
    assert ds.metadata["ingest"] == {"stats": "none", "footprint": "decimated mask"}
    assert 0.3 <= ds.valid_share <= 0.36
    assert ds.footprint is not None


def test_longitudes_0_to_360_are_brought_into_range(tmp_path):
    data = np.ones((1, 180, 360), np.uint8)
    ds = describe(write_raster(tmp_path / "g.tif", data, transform=from_origin(0, 90, 1, 1)), "c", {})
    assert ds.wgs84_bounds == (-180.0, -90.0, 180.0, 90.0)
    east = describe(write_raster(tmp_path / "e.tif", np.ones((1, 10, 10), np.uint8),
                                 transform=from_origin(200, 10, 1, 1)), "c", {})
    assert east.wgs84_bounds == pytest.approx((-160, 0, -150, 10))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("no raster here"), "not a raster GDAL can read"),
    (lambda p: write_raster(p, np.ones((1, 10, 10), np.uint8), crs=None), "has no CRS"),
    (lambda p: write_raster(p, np.ones((1, 10, 10), np.uint8), transform=rasterio.Affine.identity()),
     "has no geotransform"),
])
def test_files_that_are_no_datasets(tmp_path, make, message):
    make(tmp_path / "bad.tif")
    with pytest.raises(IngestError, match=f"bad.tif: {message}"):
        describe(str(tmp_path / "bad.tif"), "c", {})


def corrupt_tiff(tmp_path) -> str:
    """A tiled TIFF whose tiles after the header are overwritten with junk."""
    data = RNG.integers(0, 255, (1, 512, 512)).astype(np.uint8)
    path = write_raster(tmp_path / "corrupt.tif", data, compress="deflate")
    raw = bytearray(open(path, "rb").read())
    with rasterio.open(path) as src:
        offset = int(src.tags(1, "TIFF").get("BLOCK_OFFSET_0_0", 0) or 0) or 1024
    raw[offset:offset + 4000] = b"\xff" * 4000
    open(path, "wb").write(bytes(raw))
    return path


def test_a_corrupt_tiff_is_one_line_naming_it(tmp_path):
    path = corrupt_tiff(tmp_path)
    with pytest.raises(IngestError, match="corrupt.tif: cannot read its pixels"):
        describe(path, "c", {})


def test_a_truncated_tiff_is_no_raster(tmp_path):
    path = write_raster(tmp_path / "t.tif", np.ones((1, 64, 64), np.uint8))
    open(path, "r+b").truncate(100)
    with pytest.raises(IngestError, match="t.tif: not a raster GDAL can read"):
        describe(path, "c", {})


# --- patterns -----------------------------------------------------------------

def test_patterns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("S2_20200601_B04.tif", "S2_20200601_B08.tif", "S2_20200701_B04.tif", "S2_x.txt"):
        (tmp_path / name).write_bytes(b"")
    os.mkdir(tmp_path / "S2_dir_B04.tif")      # directories are not files
    p = parse_pattern("S2_{date}_{band}.tif")
    assert p.keys == ("date", "band")
    assert p.files() == [("S2_20200601_B04.tif", {"date": "20200601", "band": "B04"}),
                         ("S2_20200601_B08.tif", {"date": "20200601", "band": "B08"}),
                         ("S2_20200701_B04.tif", {"date": "20200701", "band": "B04"})]
    assert parse_pattern("S2_{}_{band}.tif").match("S2_whatever else_B04.tif") == {"band": "B04"}
    assert parse_pattern("{a.b}/x_{a.b}.tif").match("v-1/x_v-1.tif") == {"a.b": "v-1"}
    assert parse_pattern("[x]*_{k}.tif").match("[x]*_1.tif") == {"k": "1"}    # glob characters are literal


@pytest.mark.parametrize("pattern, path, message", [
    ("S2_{date}_{band}.tif", "S2_2020_06_B04.tif", "ambiguous for pattern S2_{date}_{band}.tif: key 'date'"),
    ("S2_{date}_{band}.tif", "S2__B04.tif", "no value for key 'date'"),
    ("S2_{date}.tif", "S2_a b.tif", "value 'a b' of key 'date' is not valid"),
    ("S2_{date}.tif", "S2_" + "9" * 65 + ".tif", "of key 'date' is not valid"),
    ("x/{d}/{d}.tif", "x/1/2.tif", "does not fit pattern"),
    ("S2_{date}", "S2_..", "value '..' of key 'date' is not valid"),
])
def test_file_names_without_a_key(pattern, path, message):
    with pytest.raises(IngestError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_pattern(pattern).match(path)


@pytest.mark.parametrize("pattern, message", [
    ("a_{b c}.tif", "{b c} is not a key name"), ("a_{..}.tif", "{..} is not a key name"),
    ("a_{b.tif", "unbalanced"), ("a_}.tif", "unbalanced"), ("", "empty"),
])
def test_bad_patterns(pattern, message):
    with pytest.raises(IngestError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_pattern(pattern)


# --- tile sets --------------------------------------------------------------------

def layer(name="s2", **kw) -> _config.LayerConfig:
    raw = {"name": name, "kind": "raster", "collection": "s2", "minzoom": 0, "maxzoom": 14, **kw}
    return _config.parse({"layer": [raw]}).layers[0]


def test_tileset_names():
    assert tileset_name("s2") == "s2"
    assert tileset_name("s2", ["2020-06-01", "B04"]) == "s2/2020-06-01/B04"
    assert split_tileset("s2/2020-06-01/B04") == ("s2", ("2020-06-01", "B04"))
    with pytest.raises(ValueError, match="'..'"):
        tileset_name("s2", [".."])
    lyr = layer(keys=["date"], where={"band": "B04"})
    assert layer_tileset(lyr, {"date": "1", "band": "B04"}) == "s2/1"
    assert layer_tileset(lyr, {"date": "1", "band": "B08"}) is None       # where does not match
    assert layer_tileset(lyr, {"band": "B04"}) is None                    # no date
    assert layer_tileset(layer(), {"date": "1"}) == "s2"


# --- re-ingest marks stored metatiles stale -------------------------------------

def conf(tmp_path, url: str, layers: str = "", purge: str = "off") -> str:
    p = tmp_path / "renderd.toml"
    p.write_text(f"""
[store]
kind = "disk"
path = "{tmp_path / 'cache'}"
[catalog]
url = "{url}"
[http]
purge_url = "{purge}"
{layers}
""")
    return str(p)


RASTER_LAYER = """
[[layer]]
name = "s2"
kind = "raster"
collection = "s2"
minzoom = 0
maxzoom = 14
[[layer]]
name = "other"
kind = "raster"
collection = "elsewhere"
"""


def put(store: DiskStore, tileset: str, metas) -> None:
    for m in metas:
        idx, blobs = make_index(m, [1] * (m.n * m.n))
        store.put_metatile(tileset, idx, blobs)


def stale_of(store: DiskStore, tileset: str) -> set[Meta]:
    return {i.meta for i in store.iter_indexes(tileset) if i.stale}


def test_reingest_of_a_changed_file_updates_the_row_and_marks_stored_metatiles_stale(
        tmp_path, catalog_url, capsys, fake_nginx):  # noqa: F811
    data = RNG.integers(1, 100, (1, 600, 800)).astype(np.uint16)
    path = write_raster(tmp_path / "S2_20200601.tif", data, crs="EPSG:32633", transform=UTM)
    cfg = conf(tmp_path, catalog_url, RASTER_LAYER, purge=fake_nginx)
    code, out, err = run(capsys, "-c", cfg, "ingest", str(tmp_path / "S2_{date}.tif"), "--collection", "s2")
    assert code == 0, err
    assert "1 files: 1 ingested, 0 updated" in out
    with open_catalog(catalog_url) as cat:
        first = cat.get("s2", {"date": "20200601"})
        v0 = cat.version()
    box = merc_boxes(first.wgs84_bounds)[0]
    store = DiskStore(tmp_path / "cache")
    inside = [next(metatiles_in_bbox(box, z)) for z in (3, 9, 14)]
    outside = [Meta(9, 0, 0, 8), Meta(14, 0, 0, 8)]
    put(store, "s2", inside + outside)
    put(store, "other", inside)
    # the same file again: nothing changes, nothing is marked
    code, out, _ = run(capsys, "-c", cfg, "ingest", str(tmp_path / "S2_{date}.tif"), "--collection", "s2")
    assert code == 0 and "1 unchanged" in out and stale_of(store, "s2") == set()
    # a changed file: the row is updated (ingest time moves on), its metatiles are stale
    data[0, :10, :10] = 555
    write_raster(path, data, crs="EPSG:32633", transform=UTM)
    os.utime(path, (first.mtime + 10, first.mtime + 10))
    FakePurge.posts.clear()
    code, out, err = run(capsys, "-c", cfg, "ingest", str(tmp_path / "S2_{date}.tif"), "--collection", "s2")
    assert code == 0, err
    assert "0 ingested, 1 updated" in out and "metatiles: 3 marked stale (3 s2)" in out
    assert "nginx:     192 hot tiles of 3 metatiles marked stale" in out
    assert stale_of(store, "s2") == set(inside)
    assert stale_of(store, "other") == set()
    assert sorted(l for _, lines in FakePurge.posts for l in lines) == sorted(str(m) for m in inside)
    assert {p for p, _ in FakePurge.posts} == {"/purge?layer=s2&mode=dirty"}
    with open_catalog(catalog_url) as cat:
        now = cat.get("s2", {"date": "20200601"})
        assert cat.version() == v0 + 1
    assert now.id == first.id and now.ingested > first.ingested and now.stats[0].max == 555
    # --skip-existing: same size and mtime, not even read
    code, out, _ = run(capsys, "-c", cfg, "ingest", str(tmp_path / "S2_{date}.tif"), "--collection", "s2",
                       "--skip-existing")
    assert "1 skipped" in out


def test_keyed_layers_mark_their_tileset_and_large_areas_scan_the_store(tmp_path, catalog_url):
    lyr = layer(name="k", keys=["date"], where={"band": "B04"})
    data = np.ones((1, 100, 100), np.uint8)
    write_raster(tmp_path / "S2_1_B04.tif", data, transform=from_origin(10, 50, 0.1, 0.1))
    write_raster(tmp_path / "S2_1_B08.tif", data, transform=from_origin(10, 50, 0.1, 0.1))
    store = DiskStore(tmp_path / "cache")
    box = merc_boxes((10, 40, 20, 50))[0]
    at14 = list(metatiles_in_bbox(box, 14))
    put(store, "k/1", [at14[0], at14[-1], Meta(14, 0, 0, 8)])
    restale = Restale([lyr], "s2", lambda: store, scan_limit=1000)
    assert len(at14) > 1000          # zoom 14 is done from the store's list
    with open_catalog(catalog_url) as cat:
        s = ingest(cat, str(tmp_path / "S2_{date}_{band}.tif"), "s2", restale=restale)
    assert (s.ingested, s.stale) == (2, {"k/1": 2})
    assert stale_of(store, "k/1") == {at14[0], at14[-1]}


def test_stored_metatiles_enumerates_small_areas():
    class NoScan:
        def iter_indexes(self, *a):
            raise AssertionError("small areas are enumerated")
    box = merc_boxes((10, 40, 11, 41))[0]
    metas = list(stored_metatiles(NoScan(), "s2", [box], (0, 10)))
    assert metas[0] == Meta(0, 0, 0, 1) and all(m.z <= 10 for m in metas)
    assert set(metas) >= set(metatiles_in_bbox(box, 10))


def test_merc_boxes():
    assert merc_boxes((170, 10, -170, 20)) == [(170, 10, 180.0, 20), (-180.0, 10, -170, 20)]
    assert merc_boxes((0, 86, 10, 89)) == []
    assert merc_boxes((0, -89, 10, 89))[0].north < 85.06


# --- the command lines --------------------------------------------------------------

def rows(url: str) -> list:
    with open_catalog(url) as cat:
        return [(d.path, d.ingested) for c in cat.collections() for d in cat.list(c)]


@pytest.mark.parametrize("name, make, message", [
    ("text.tif", lambda p: p.write_text("hello"), "text.tif: not a raster GDAL can read"),
    ("nocrs.tif", lambda p: write_raster(p, np.ones((1, 8, 8), np.uint8), crs=None), "nocrs.tif: has no CRS"),
    ("corrupt.tif", None, "corrupt.tif: cannot read its pixels"),
])
def test_a_bad_file_stops_the_run_with_one_line_and_the_catalog_unchanged(
        tmp_path, capsys, catalog_url, name, make, message):
    d = tmp_path / "in"
    d.mkdir()
    write_raster(d / "a_good.tif", np.ones((1, 8, 8), np.uint8))
    cfg = conf(tmp_path, catalog_url)
    assert run(capsys, "-c", cfg, "ingest", str(d / "a_{k}.tif"), "--collection", "c")[0] == 0
    before = rows(catalog_url)
    if make is None:
        os.replace(corrupt_tiff(tmp_path), d / "z_corrupt.tif")
        name = "z_corrupt.tif"
    else:
        make(d / name)
    os.utime(d / "a_good.tif", (1, 1))           # changed too: but the bad file stops the run first
    code, out, err = run(capsys, "-c", cfg, "ingest", str(d / "{}.tif"), "--collection", "c")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("renderd-py: error: ") and message in err
    assert "Traceback" not in err
    after = rows(catalog_url)
    if make is None:
        # found while reading pixels: the file before it is in, the bad one is not
        assert "1 updated" in out and "1 failed" in out
        assert [p for p, _ in after] == [p for p, _ in before] and after[0][1] > before[0][1]
    else:            # found by the check of every header: nothing was written
        assert after == before


@pytest.mark.parametrize("argv, message, code", [
    (["ingest", "{d}/none_{k}.tif", "--collection", "c"], "matches no file", 2),
    (["ingest", "{d}/S2_{{date}}.tif", "--collection", "c"], "S2_.tif: no value for key 'date'", 2),
    (["ingest", "{d}/S2_{{da te}}.tif", "--collection", "c"], "{da te} is not a key name", 2),
    (["ingest", "{d}/S2_{{date}}.tif", "--collection", "a/b"], "Invalid value for --collection", 2),
    (["ingest", "{d}/S2_{{date}}.tif"], "Missing option '--collection'", 2),
    (["datasets", "--collection", "nope"], "the catalog has no collection 'nope'", 2),
    (["datasets", "--collection", "c", "--where", "x"], "--where 'x' is not KEY=VALUE", 2),
    (["datasets", "--collection", "c", "--where", "x=a b"], "--where value of 'x'", 2),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message, code):
    url = f"sqlite://{tmp_path / 'catalog.sqlite'}"
    write_raster(tmp_path / "S2_.tif", np.ones((1, 8, 8), np.uint8))
    write_raster(tmp_path / "S2_1.tif", np.ones((1, 8, 8), np.uint8))
    cfg = conf(tmp_path, url)
    assert run(capsys, "-c", cfg, "ingest", str(tmp_path / "S2_1.tif"), "--collection", "c")[0] == 0
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    argv = [a.replace("{{", "{").replace("}}", "}") for a in argv]
    got, out, err = run(capsys, "-c", cfg, *argv)
    assert got == code and err.count("\n") == 1 and message in err, err


def test_catalog_of_another_schema_version_exit_2(tmp_path, capsys):
    url = f"sqlite://{tmp_path / 'catalog.sqlite'}"
    write_raster(tmp_path / "a.tif", np.ones((1, 8, 8), np.uint8))
    cfg = conf(tmp_path, url)
    open_catalog(url).close()
    con = sqlite3.connect(tmp_path / "catalog.sqlite")
    con.execute("UPDATE catalog_meta SET value = '7' WHERE name = 'schema_version'")
    con.commit()
    con.close()
    for argv in (["ingest", str(tmp_path / "a.tif"), "--collection", "c"], ["datasets", "--collection", "c"]):
        code, _, err = run(capsys, "-c", cfg, *argv)
        assert code == 2 and err.count("\n") == 1
        assert "is a catalog of schema version 7; this renderd-py reads version 1" in err


def test_missing_catalog_for_datasets_exit_2(tmp_path, capsys):
    cfg = conf(tmp_path, f"sqlite://{tmp_path / 'none.sqlite'}")
    code, _, err = run(capsys, "-c", cfg, "datasets", "--collection", "c")
    assert code == 2 and "does not exist (renderd-py ingest makes it)" in err
    assert not (tmp_path / "none.sqlite").exists()


def test_unreachable_postgres_exit_1(tmp_path, capsys):
    from tests.fixtures.servers import free_port
    write_raster(tmp_path / "a.tif", np.ones((1, 8, 8), np.uint8))
    cfg = conf(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    code, _, err = run(capsys, "-c", cfg, "ingest", str(tmp_path / "a.tif"), "--collection", "c")
    assert code == 1 and err.count("\n") == 1 and "cannot connect to catalog postgresql://" in err


def test_datasets_table_and_json(tmp_path, capsys, catalog_url):
    for date in ("20200601", "20200701"):
        for band, scale in (("B04", 1), ("B08", 2)):
            data = (RNG.integers(1, 100, (1, 60, 80)) * scale).astype(np.uint16)
            write_raster(tmp_path / f"S2_{date}_{band}.tif", data, crs="EPSG:32633", transform=UTM, nodata=0)
    cfg = conf(tmp_path, catalog_url)
    code, out, err = run(capsys, "-c", cfg, "ingest", str(tmp_path / "S2_{date}_{band}.tif"),
                         "--collection", "s2", "--json")
    assert code == 0 and json.loads(out)["ingested"] == 4
    code, out, _ = run(capsys, "-c", cfg, "datasets", "--collection", "s2", "--where", "band=B08")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split()[:3] == ["path", "keys", "size"]
    assert "band=B08 date=20200601" in lines[1] and "80x60" in lines[1] and "1 uint16 nodata 0" in lines[1]
    assert "100.0%" in lines[1] and "13.6148," in lines[1]
    code, out, _ = run(capsys, "-c", cfg, "datasets", "--collection", "s2", "--json", "--limit", "1",
                       "--offset", "1")
    got = json.loads(out)
    assert [d["keys"] for d in got] == [{"band": "B08", "date": "20200601"}]
    d = got[0]
    assert d["crs"] == "EPSG:32633" and d["stats"][0]["count"] == 4800
    assert set(d["stats"][0]["percentiles"]) == {str(p) for p in range(1, 100)}
    assert d["footprint"]["type"] == "Polygon"
    code, out, _ = run(capsys, "-c", cfg, "datasets", "--json")
    assert json.loads(out) == {"s2": 4}


def test_skip_existing_checks_no_header_of_a_file_it_skips(tmp_path, capsys, monkeypatch):
    url = f"sqlite://{tmp_path / 'catalog.sqlite'}"
    for i in range(3):
        write_raster(tmp_path / f"a_{i}.tif", np.full((1, 8, 8), i, np.uint8))
    cfg = conf(tmp_path, url)
    assert run(capsys, "-c", cfg, "ingest", str(tmp_path / "a_{i}.tif"), "--collection", "c")[0] == 0
    write_raster(tmp_path / "a_3.tif", np.full((1, 8, 8), 3, np.uint8))
    opened = []
    import renderd.tools.ingest as tool
    real = tool.open_raster
    monkeypatch.setattr(tool, "open_raster", lambda p, **kw: (opened.append(os.path.basename(p)), real(p, **kw))[1])
    code, out, _ = run(capsys, "-c", cfg, "ingest", str(tmp_path / "a_{i}.tif"), "--collection", "c",
                       "--skip-existing")
    assert code == 0 and "1 ingested, 0 updated, 0 unchanged, 3 skipped" in out
    assert opened == ["a_3.tif"]


def test_rasters_read_after_mapnik_was_imported(tmp_path):
    """The mapnik wheel points PROJ_LIB at a folder without proj.db."""
    import subprocess
    import sys
    code = ("import mapnik, numpy as np; from rasterio.transform import from_origin;"
            "from tests.fixtures.catalog import write_raster; from renderd.catalog.describe import describe;"
            f"p = write_raster({str(tmp_path / 'u.tif')!r}, np.ones((1, 8, 8), np.uint8), crs='EPSG:32633',"
            " transform=from_origin(400000, 5500000, 30, 30));"
            "print(describe(p, 'c', {}).crs)")
    env = {k: v for k, v in os.environ.items() if k not in ("PROJ_LIB", "PROJ_DATA")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "EPSG:32633"
