"""The raster renderer on small synthetic COGs made at test time.

Pixels are checked after decoding the encoded tiles; agreement with GDAL's
warper and with rio-tiler is measured as the share of identical pixels.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from rasterio.transform import from_origin

from renderd.errors import RenderError
from renderd.render import raster_read as rr
from renderd.render.raster_renderer import RasterRenderer
from renderd.render.tiles import EncodeMemo
from renderd.tilemath import Meta, Tile, meta_tiles, metatile_of
from tests.fixtures.rasters import ListFind, dataset_record, raster_layer, write_cog

warnings.filterwarnings("ignore", module="rasterio")

#: a 10 x 10 degree box over the Alps at 0.02 degrees; the metatile of z8 tiles meeting its middle
WEST, NORTH, RES = 4.0, 50.0, 0.02
BOX = from_origin(WEST, NORTH, RES, RES)
META8 = metatile_of(8, 134, 90)     # z8 tiles around 9E 46N


def rgba(data: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def mode_of(data: bytes) -> str:
    from PIL import Image
    return Image.open(io.BytesIO(data)).mode


def pattern(bands: int = 3, h: int = 500, w: int = 500) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([((x * 7 + y * 3 + 40 * b) % 256) for b in range(bands)]).astype(np.uint8)


def render(layer, datasets, meta=META8, memo=None, keys=None):
    with RasterRenderer(layer, find=ListFind(datasets),
                        memo=memo if memo is not None else EncodeMemo()) as r:
        return r.render(meta, keys)


def metatile_pixels(result, meta) -> np.ndarray:
    n = meta.n
    out = np.zeros((n * 256, n * 256, 4), dtype=np.uint8)
    for i in range(n * n):
        x, y = (i // n) * 256, (i % n) * 256
        out[y:y + 256, x:x + 256] = rgba(result.tile(i))
    return out


def grid_lonlat(meta: Meta) -> tuple[np.ndarray, np.ndarray]:
    g = rr.Grid.of(meta)
    return g.lon_centers, g.lat_centers


def expected_from(array: np.ndarray, meta: Meta, transform=BOX) -> tuple[np.ndarray, np.ndarray]:
    """What nearest resampling of a 4326 raster gives on the metatile grid, and where it covers."""
    lon, lat = grid_lonlat(meta)
    cols = np.floor((lon - transform.c) / transform.a + 1e-10).astype(int)
    rows = np.floor((lat - transform.f) / transform.e + 1e-10).astype(int)
    h, w = array.shape[-2:]
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    vals = array[..., np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]]
    return vals, inside


# --- RGB, masks, nodata ----------------------------------------------------------------

def test_rgb_uint8_png_is_the_source_pixels(tmp_path):
    a = pattern()
    ds = dataset_record(write_cog(tmp_path / "rgb.tif", a, "EPSG:4326", BOX))
    res = render(raster_layer(), [ds])
    px = metatile_pixels(res, META8)
    want, inside = expected_from(a, META8)
    assert inside.any() and not inside.all()     # the box meets part of the metatile
    assert (px[:, :, 3][inside] == 255).all() and (px[:, :, 3][~inside] == 0).all()
    assert (px[:, :, :3][inside] == np.moveaxis(want, 0, -1)[inside]).all()
    # fully opaque tiles are RGB PNGs, partly covered ones RGBA
    modes = {mode_of(res.tile(i)) for i in range(64)}
    assert "RGB" in modes and "RGBA" in modes


def test_float_nodata_edges_are_transparent(tmp_path):
    a = np.full((1, 500, 500), 7.5, dtype=np.float32)
    a[:, 400:420, :] = -9999.0        # a band of nodata across (about 42N)
    a[:, :, :25] = np.nan             # and NaN along the west edge
    ds = dataset_record(write_cog(tmp_path / "f.tif", a, "EPSG:4326", BOX, nodata=-9999.0))
    px = metatile_pixels(render(raster_layer(rescale="0,10"), [ds]), META8)
    want, inside = expected_from(a[0], META8)
    valid = inside & (want != -9999.0) & ~np.isnan(want)
    assert valid.any() and (inside & ~valid).any()
    assert (px[:, :, 3][valid] == 255).all() and (px[:, :, 3][~valid] == 0).all()
    assert (px[:, :, 0][valid] == int(7.5 / 10 * 255)).all()


def test_internal_mask_is_transparency(tmp_path):
    a = pattern()
    mask = np.ones((500, 500), dtype=bool)
    mask[100:200, 100:300] = False
    ds = dataset_record(write_cog(tmp_path / "m.tif", a, "EPSG:4326", BOX, mask=mask))
    px = metatile_pixels(render(raster_layer(), [ds]), META8)
    want, inside = expected_from(mask[None].astype(np.uint8), META8)
    valid = inside & (want[0] == 1)
    assert (inside & ~valid).any()
    assert (px[:, :, 3][valid] == 255).all() and (px[:, :, 3][~valid] == 0).all()


def test_alpha_band_is_transparency(tmp_path):
    a = pattern(4)
    a[3] = 255
    a[3, 300:, :] = 0
    ds = dataset_record(write_cog(tmp_path / "a.tif", a, "EPSG:4326", BOX, alpha=True))
    px = metatile_pixels(render(raster_layer(), [ds]), META8)
    want, inside = expected_from(a, META8)
    valid = inside & (want[3] == 255)
    assert (inside & ~valid).any()
    assert (px[:, :, 3][valid] == 255).all() and (px[:, :, 3][~valid] == 0).all()
    assert (px[:, :, :3][valid] == np.moveaxis(want[:3], 0, -1)[valid]).all()


def test_all_nodata_metatile_is_one_blob_encoded_once(tmp_path):
    a = np.full((1, 500, 500), -1.0, dtype=np.float32)
    ds = dataset_record(write_cog(tmp_path / "e.tif", a, "EPSG:4326", BOX, nodata=-1.0))
    memo = EncodeMemo()
    layer = raster_layer(rescale="0,1", colormap="viridis")
    res = render(layer, [ds], memo=memo)
    assert res.unique == 1 and res.encoded == 1 and res.reused == 63
    assert (rgba(res.tile(0))[:, :, 3] == 0).all()
    # the next metatile of nothing takes no encode at all; nor does one outside every dataset
    far = metatile_of(8, 0, 0)
    again = render(layer, [ds], meta=far, memo=memo)
    assert again.encoded == 0 and again.hashes == (res.hashes[0],) * 64


# --- mosaics across datasets and CRSs ------------------------------------------------------

@pytest.mark.parametrize("method,overlap", [("first", 10), ("last", 30), ("highest", 30),
                                            ("lowest", 10), ("mean", 20)])
def test_mosaic_methods(tmp_path, method, overlap):
    left = write_cog(tmp_path / "a.tif", np.full((1, 500, 300), 10, np.uint8), "EPSG:4326", BOX)
    right = write_cog(tmp_path / "b.tif", np.full((1, 500, 300), 30, np.uint8), "EPSG:4326",
                      from_origin(WEST + 4, NORTH, RES, RES))   # lon 8..14 over 4..10
    datasets = [dataset_record(left), dataset_record(right)]
    px = metatile_pixels(render(raster_layer(mosaic=method), datasets), META8)
    lon, lat = grid_lonlat(META8)
    rows = (lat < NORTH - 0.1) & (lat > NORTH - 9.9)
    only_left = (lon > WEST + 0.1) & (lon < WEST + 3.9)
    both = (lon > WEST + 4.1) & (lon < WEST + 5.9)
    only_right = (lon > WEST + 6.1) & (lon < WEST + 9.9)
    assert (px[rows][:, only_left, 0] == 10).all()
    assert (px[rows][:, both, 0] == overlap).all()
    assert (px[rows][:, only_right, 0] == 30).all()


def _utm_from(reference: str, epsg: int, west: float, east: float, path) -> str:
    """Reproject the part west..east of a 4326 raster into UTM (nearest), as a COG."""
    import rasterio
    from rasterio.warp import calculate_default_transform, reproject, transform_bounds
    from rasterio.enums import Resampling

    with rasterio.open(reference) as src:
        bounds = (west, src.bounds.bottom, east, src.bounds.top)
        dst_bounds = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *bounds)
        res = 1000.0
        t, w, h = calculate_default_transform("EPSG:4326", f"EPSG:{epsg}", 1, 1, *bounds,
                                              resolution=res)
        dst = np.full((1, h, w), np.nan, dtype=np.float32)
        reproject(src.read(), dst, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs=f"EPSG:{epsg}", resampling=Resampling.nearest,
                  src_nodata=np.nan, dst_nodata=np.nan)
        # keep only what lies between west and east (the scene's own zone)
        from rasterio.warp import transform as warp_transform
        cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        xs, ys = t * (cols.ravel(), rows.ravel())
        lon, _ = warp_transform(f"EPSG:{epsg}", "EPSG:4326", xs, ys)
        lon = np.asarray(lon).reshape(h, w)
        dst[0][(lon < west) | (lon > east)] = np.nan
        del dst_bounds
    return write_cog(path, dst, f"EPSG:{epsg}", t, nodata=np.nan)


def test_two_utm_zones_mosaic_without_a_seam(tmp_path):
    """Scenes in UTM 32N and 33N meet at 12E; along the border the mosaic matches a
    single-CRS reference: no gap, no step."""
    y, x = np.mgrid[0:150, 0:300]
    ref = ((x * 0.8) + (y * 0.3)).astype(np.float32)[None]        # smooth: 0..285
    t = from_origin(9.0, 48.0, RES, RES)                            # lon 9..15, lat 45..48
    ref_path = write_cog(tmp_path / "ref.tif", ref, "EPSG:4326", t, nodata=np.nan)
    # each scene reaches a little across the border, as scenes of neighbouring zones do
    west = _utm_from(ref_path, 32632, 9.0, 12.05, tmp_path / "a32.tif")
    east = _utm_from(ref_path, 32633, 11.95, 15.0, tmp_path / "b33.tif")
    meta = metatile_of(9, 273, 181)     # z9 around 12E 46.5N
    layer = raster_layer(rescale="0,300")
    want = metatile_pixels(render(layer, [dataset_record(ref_path)], meta=meta), meta)
    got = metatile_pixels(render(layer, [dataset_record(west), dataset_record(east)], meta=meta),
                          meta)
    lon, lat = grid_lonlat(meta)
    border = np.flatnonzero(np.abs(lon - 12.0) < 0.05)          # columns near the zone border
    rows = np.flatnonzero((lat > 45.6) & (lat < 47.8))     # inside both scenes
    assert len(border) > 10 and len(rows) > 100
    g, w = got[rows][:, border], want[rows][:, border]
    assert (w[:, :, 3] == 255).all()
    assert (g[:, :, 3] == 255).all(), "transparent pixels along the border: a seam"
    diff = np.abs(g[:, :, 0].astype(int) - w[:, :, 0].astype(int))
    # nearest on a UTM grid of 1 km against 0.02 degrees: a pixel or two of the gradient at most
    assert diff.max() <= 3 and diff.mean() < 1.0


# --- styling ---------------------------------------------------------------------------------

def _float_ramp(tmp_path) -> tuple[str, np.ndarray]:
    y, x = np.mgrid[0:500, 0:500]
    a = (x / 5.0 + y / 50.0).astype(np.float32)[None]               # 0..110
    return write_cog(tmp_path / "ramp.tif", a, "EPSG:4326", BOX), a


def _rio_rescale(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """rio-tiler's linear_rescale, stored back in float32, truncated to uint8."""
    im = (np.clip(v, lo, hi, dtype=np.float64) - lo) / np.float64(hi - lo) * 255
    return im.astype(np.float32).astype(np.uint8)


def test_rescale_numbers(tmp_path):
    path, a = _float_ramp(tmp_path)
    px = metatile_pixels(render(raster_layer(rescale="20,80"), [dataset_record(path)]), META8)
    want, inside = expected_from(a[0], META8)
    assert (px[:, :, 0][inside] == _rio_rescale(want, 20, 80)[inside]).all()
    assert mode_of(render(raster_layer(rescale="20,80"), [dataset_record(path)]).tile(27)) == "L"


def test_rescale_percentiles_and_default_min_max(tmp_path):
    path, a = _float_ramp(tmp_path)
    ds = dataset_record(path)
    lo, hi = ds.band_stats(1).percentile(2), ds.band_stats(1).percentile(98)
    want, inside = expected_from(a[0], META8)
    px = metatile_pixels(render(raster_layer(rescale="p2,p98"), [ds]), META8)
    assert (px[:, :, 0][inside] == _rio_rescale(want, lo, hi)[inside]).all()
    # no rescale on a float layer: the catalog's min and max
    px = metatile_pixels(render(raster_layer(), [ds]), META8)
    s = ds.band_stats(1)
    assert (px[:, :, 0][inside] == _rio_rescale(want, s.min, s.max)[inside]).all()


def test_colormap_is_a_palette_png_of_rio_tilers_colours(tmp_path):
    from rio_tiler.colormap import cmap, make_lut
    path, a = _float_ramp(tmp_path)
    res = render(raster_layer(rescale="0,110", colormap="viridis"), [dataset_record(path)])
    px = metatile_pixels(res, META8)
    want, inside = expected_from(a[0], META8)
    lut = make_lut(cmap.get("viridis"))
    assert (px[inside] == lut[_rio_rescale(want, 0, 110)][inside]).all()
    assert (px[:, :, 3][~inside] == 0).all()
    assert {mode_of(res.tile(i)) for i in range(64)} == {"P"}


def test_expression_and_bands(tmp_path):
    a = pattern(3)
    ds = dataset_record(write_cog(tmp_path / "rgb.tif", a, "EPSG:4326", BOX))
    want, inside = expected_from(a.astype(np.float32), META8)
    px = metatile_pixels(render(raster_layer(expression="(b1 + b2) / 2", rescale="0,255"), [ds]),
                         META8)
    assert (px[:, :, 0][inside] == _rio_rescale((want[0] + want[1]) / 2, 0, 255)[inside]).all()
    px = metatile_pixels(render(raster_layer(bands=[3, 2, 1]), [ds]), META8)
    assert (px[:, :, :3][inside] == np.moveaxis(want[::-1], 0, -1).astype(np.uint8)[inside]).all()
    px = metatile_pixels(render(raster_layer(bands=[2]), [ds]), META8)
    assert (px[:, :, 0][inside] == want[1].astype(np.uint8)[inside]).all()


@pytest.mark.parametrize("fmt,kind,tolerance", [("png", "PNG", 0), ("jpeg90", "JPEG", 4),
                                                ("webp90", "WEBP", 5)])
def test_formats_decode_to_the_pixels(tmp_path, fmt, kind, tolerance):
    from PIL import Image
    y, x = np.mgrid[0:500, 0:500]
    a = np.stack([x // 2, y // 2, (x + y) // 4]).astype(np.uint8)     # smooth, so lossy is close
    ds = dataset_record(write_cog(tmp_path / "s.tif", a, "EPSG:4326", BOX))
    res = render(raster_layer(format=fmt), [ds])
    assert {Image.open(io.BytesIO(b)).format for b in res.blobs.values()} == {kind}
    px = metatile_pixels(res, META8)
    want, inside = expected_from(a, META8)
    diff = np.abs(px[:, :, :3].astype(int) - np.moveaxis(want, 0, -1).astype(int))[inside]
    assert diff.mean() <= tolerance / 2 and np.percentile(diff, 99) <= tolerance * 2
    if kind == "JPEG":   # no data is black (away from the data's edge, where JPEG rings)
        cover = inside.reshape(8, 256, 8, 256).any(axis=(1, 3))
        assert not cover.all()
        for ty, tx in zip(*np.nonzero(~cover)):
            assert (px[ty * 256:(ty + 1) * 256, tx * 256:(tx + 1) * 256, :3] <= 2).all()
    else:
        assert (px[:, :, 3][~inside] == 0).all()


# --- agreement with GDAL's warper and rio-tiler -------------------------------------------

def _share_equal(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).all(axis=-1).mean())


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
@pytest.mark.parametrize("z", [5, 8, 10])
def test_fast_path_gives_gdal_warpers_pixels(tmp_path, crs, z):
    a = pattern(3)
    if crs == "EPSG:3857":
        t = from_origin(445000.0, 6440000.0, 2000.0, 2000.0)
    else:
        t = BOX
    ds = dataset_record(write_cog(tmp_path / "p.tif", a, crs, t))
    lon, lat = (WEST + 5, NORTH - 4) if crs == "EPSG:4326" else (9.0, 48.0)
    import mercantile
    tile = mercantile.tile(lon, lat, z)
    meta = metatile_of(z, tile.x, tile.y)
    grid = rr.Grid.of(meta)
    pool = rr.DatasetPool()
    level = rr.choose_overview(ds, grid.res)
    src = pool.get(ds, level)
    fast = rr._read_separable(src, grid, (1, 2, 3), rr.crs_kind(ds.crs), rr.ReadTimes())
    warped = rr._read_warped(src, ds, grid, (1, 2, 3), "nearest", rr.ReadTimes())
    pool.close()

    def full(p):
        v = np.zeros((grid.height, grid.width, 4), np.uint8)
        v[p.rows, p.cols, :3] = p.values
        v[p.rows, p.cols, 3] = p.valid
        v[v[:, :, 3] == 0] = 0
        return v
    share = _share_equal(full(fast), full(warped))
    assert share >= 0.999, f"fast path and warper agree on {share:.4%} of pixels"


@pytest.mark.parametrize("z", [4, 6, 8, 9])
def test_agrees_with_rio_tiler(tmp_path, z):
    from rio_tiler.errors import TileOutsideBounds
    from rio_tiler.io import Reader
    import mercantile
    a = pattern(3, 1000, 1000)
    path = write_cog(tmp_path / "big.tif", a, "EPSG:4326", from_origin(WEST, NORTH, 0.01, 0.01))
    t = mercantile.tile(WEST + 5, NORTH - 5, z)
    meta = metatile_of(z, t.x, t.y)
    res = render(raster_layer(), [dataset_record(path)], meta=meta)
    same = total = 0
    with Reader(path) as src:
        for i, tile in enumerate(meta_tiles(meta)):
            ours = rgba(res.tile(i))
            try:
                theirs = rgba(src.tile(tile.x, tile.y, tile.z).render(img_format="PNG"))
            except TileOutsideBounds:
                theirs = np.zeros_like(ours)
            eq = (ours == theirs).all(axis=2) | ((ours[:, :, 3] == 0) & (theirs[:, :, 3] == 0))
            same += int(eq.sum())
            total += eq.size
    assert same / total >= 0.999, f"{same / total:.4%} of pixels identical to rio-tiler's"


def test_overview_matches_the_metatile_resolution(tmp_path):
    a = pattern(3, 2000, 2000)
    ds = dataset_record(write_cog(tmp_path / "o.tif", a, "EPSG:4326",
                                  from_origin(0, 50, 0.005, 0.005)))
    assert len(ds.overviews) >= 2
    native = rr.native_merc_res(ds)
    assert rr.choose_overview(ds, native) == 0
    assert rr.choose_overview(ds, native * 1.5) == 0        # 2x is above 1.5 * 1.2 + 0.1
    assert rr.choose_overview(ds, native * 2.0) == 1
    assert rr.choose_overview(ds, native * 4.5) == 2
    assert rr.choose_overview(ds, native * 1.8, "bilinear") == 0


# --- failures ---------------------------------------------------------------------------------

def test_a_vanished_file_is_a_render_error_naming_it(tmp_path):
    path = write_cog(tmp_path / "gone.tif", pattern(), "EPSG:4326", BOX)
    ds = dataset_record(path)
    os.remove(path)
    with RasterRenderer(raster_layer(), find=ListFind([ds]), memo=EncodeMemo()) as r:
        with pytest.raises(RenderError, match="gone.tif"):
            r.render(META8)
        # the renderer still renders metatiles the file does not meet
        assert r.render(metatile_of(8, 0, 0)).unique == 1


def test_keys_are_checked_and_passed_to_find(tmp_path):
    a = write_cog(tmp_path / "a.tif", np.full((1, 500, 500), 10, np.uint8), "EPSG:4326", BOX)
    b = write_cog(tmp_path / "b.tif", np.full((1, 500, 500), 90, np.uint8), "EPSG:4326", BOX)
    datasets = [dataset_record(a, keys={"month": "01"}), dataset_record(b, keys={"month": "07"})]
    layer = raster_layer(keys=["month"])
    res = render(layer, datasets, keys={"month": "07"})
    assert rgba(res.tile(27))[128, 128, 0] == 90
    with pytest.raises(RenderError, match="month"):
        render(layer, datasets)
    with pytest.raises(RenderError, match="no keys"):
        render(raster_layer(), datasets, keys={"month": "07"})


def test_mapnik_imported_first_leaves_rasterio_its_crs_database(tmp_path):
    """Importing the Mapnik wheel points PROJ_LIB at a folder without proj.db; a worker
    with a Mapnik layer before a raster layer must still warp a UTM dataset."""
    import subprocess
    import sys
    code = f"""
import mapnik, numpy as np
from rasterio.transform import from_origin
from tests.fixtures.rasters import ListFind, dataset_record, raster_layer, write_cog
from renderd.render.raster_renderer import RasterRenderer
from renderd.tilemath import metatile_of
p = write_cog({str(tmp_path / 'utm.tif')!r}, np.full((1, 200, 200), 50, np.uint8), "EPSG:32632",
              from_origin(400000, 5200000, 1000, 1000))
with RasterRenderer(raster_layer(), find=ListFind([dataset_record(p)])) as r:
    res = r.render(metatile_of(8, 134, 90))
print(res.unique, r.last_times.warped)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    unique, warped = out.stdout.split()
    assert int(unique) > 1 and int(warped) == 1


def test_catalog_find_asks_the_catalog_with_where_and_keys():
    from renderd.errors import StyleError, UsageError
    from renderd.render import CatalogFind

    calls = []

    class Catalog:
        def find(self, collection, where, bbox):
            calls.append((collection, where, bbox))
            return []

        def close(self):
            calls.append("closed")

    layer = raster_layer(collection="sst", keys=["month"], where={"band": "sst"})
    find = CatalogFind("sqlite:///x.sqlite", layer, opener=lambda url: Catalog())
    assert find((0.0, 1.0, 2.0, 3.0), {"month": "07"}) == []
    find.close()
    assert calls == [("sst", {"band": "sst", "month": "07"}, (0.0, 1.0, 2.0, 3.0)), "closed"]

    def broken(url):
        raise UsageError("catalog schema 7, expected 1")
    with pytest.raises(StyleError, match="layer r: catalog sqlite:///x.sqlite: catalog schema 7"):
        CatalogFind("sqlite:///x.sqlite", layer, opener=broken).open()


# --- the command line --------------------------------------------------------------------------

def test_renderd_py_render_a_raster_tile(tmp_path, monkeypatch, capsys):
    import renderd.render
    from renderd.cli.main import main

    a = pattern()
    ds = dataset_record(write_cog(tmp_path / "rgb.tif", a, "EPSG:4326", BOX))
    seen = []

    def finder(url, layer):
        seen.append((url, layer.name))
        return ListFind([ds])
    monkeypatch.setattr(renderd.render, "catalog_finder", finder)
    cfg = tmp_path / "r.toml"
    cfg.write_text(f"""
[catalog]
url = "sqlite://{tmp_path / 'catalog.sqlite'}"
[store]
path = "{tmp_path / 'store'}"
[[layer]]
name = "rgb"
kind = "raster"
collection = "test"
format = "png"
""")
    tile = next(t for t in meta_tiles(META8) if t.x == 135 and t.y == 91)
    out = tmp_path / "t.png"
    main(["-c", str(cfg), "render", "rgb", str(tile.z), str(tile.x), str(tile.y), "-o", str(out)])
    assert seen == [(f"sqlite://{tmp_path / 'catalog.sqlite'}", "rgb")]
    with RasterRenderer(raster_layer(format="png"), find=ListFind([ds]), memo=EncodeMemo()) as r:
        want = r.render(META8).tile([*meta_tiles(META8)].index(Tile(*tile)))
    assert out.read_bytes() == want
    # a key the layer does not have: one line, exit 2
    with pytest.raises(SystemExit) as e:
        main(["-c", str(cfg), "render", "rgb", "8", "135", "91", "-o", str(out), "--key", "a=b"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
