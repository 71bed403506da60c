"""``renderd-py optimize-rasters``: every output is a valid COG (rio-cogeo's
``cog_validate``), tiled, with overviews down to a block, a mask where the
source had nodata, alpha or a mask, the source's pixels where compression
is lossless; ``--reproject`` lands on the Web Mercator tile grid and covers
the source; current outputs are skipped; writes are atomic; bad input is one
line and exit 2. Sources are small synthetic rasters written at test time,
plus the sample data when it has been fetched."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from renderd.cli.main import main
from renderd.tilemath import MERC_HALF
from renderd.tools import cog
from renderd.tools.nctime import decode

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "data" / "raster"
UTM = "EPSG:32633"


# --- sources -----------------------------------------------------------------

@pytest.fixture(autouse=True)
def _raster_env():
    with cog.raster_env():   # Mapnik, imported by other tests, hides rasterio's proj.db
        yield



def write(path: Path, data: np.ndarray, crs: str | None = "EPSG:4326", transform=None,
          nodata=None, driver: str = "GTiff", **kw) -> str:
    count, h, w = data.shape
    if transform is None and crs is not None:
        transform = from_origin(10.0, 50.0, 0.01, 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=w, height=h, count=count,
                           dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
                           **kw) as d:
            d.write(data)
    return str(path)


def field(h: int, w: int, bands: int = 1, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    return np.stack([(np.sin(x / (17 + 5 * b)) + np.cos(y / 23)) * 60 + 120
                     + rng.normal(0, 4, (h, w)) for b in range(bands)])


@pytest.fixture
def rgb(tmp_path):
    return write(tmp_path / "rgb.tif", field(700, 900, 3).clip(0, 255).astype("uint8"))


@pytest.fixture
def rgba(tmp_path):
    a = field(600, 800, 4).clip(0, 255).astype("uint8")
    a[3] = 255
    a[3, :, :150] = 0
    a[3, 500:, :] = 0
    return write(tmp_path / "rgba.tif", a, photometric="RGB", alpha="YES")


@pytest.fixture
def floats(tmp_path):
    a = (field(1100, 700) / 7).astype("float32")
    a[:, :, :60] = -9999
    a[:, 400:520, 300:420] = -9999
    return write(tmp_path / "floats.tif", a, crs=UTM,
                 transform=from_origin(400000, 5500000, 30, 30), nodata=-9999)


@pytest.fixture
def ints(tmp_path):
    return write(tmp_path / "dem.tif", (field(800, 800) * 20 - 900).astype("int16"), crs=UTM,
                 transform=from_origin(400000, 5500000, 30, 30))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["optimize-rasters", *argv])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def validate(path: str) -> None:
    """``cog_validate`` with no errors or warnings, except one it gets wrong:
    "Overview of index N is not tiled" for a tiled level exactly one block
    wide and more than 512 high (it takes block width == width for strips)."""
    ok, errors, warns = cog_validate(path, quiet=True)
    explained = []
    for e in errors:
        if e.startswith("Overview of index"):
            i = int(e.split()[3])
            with rasterio.open(path, OVERVIEW_LEVEL=i) as o:
                bh, bw = o.block_shapes[0]
                if bh == bw < o.height:   # square tiles, several of them down
                    explained.append(e)
    assert [e for e in errors if e not in explained] == [], errors
    assert warns == []


def check_cog(path: str, blocksize: int = 512) -> rasterio.DatasetReader:
    validate(path)
    d = rasterio.open(path)
    assert d.profile["tiled"] and d.block_shapes[0] == (blocksize, blocksize)
    ovr = d.overviews(1)
    if max(d.width, d.height) > blocksize:
        assert ovr, "no overviews"
        last = max(ovr)
        assert max(-(-d.width // last), -(-d.height // last)) <= blocksize
    return d


def record(d) -> dict:
    return json.loads(d.tags()[cog.TAG])


# --- conversions ---------------------------------------------------------------

def test_rgb_auto_is_lossless_zstd(rgb, tmp_path, capsys):
    code, out, err = run(capsys, rgb, "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "written" in out and "1 written, 0 current, 0 failed" in out
    with check_cog(str(tmp_path / "out" / "rgb.tif")) as d, rasterio.open(rgb) as s:
        assert d.profile["compress"] == "zstd"
        assert d.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert (d.read() == s.read()).all()
        assert d.crs == s.crs and d.transform == s.transform
        assert d.mask_flag_enums[0] == [MaskFlags.all_valid]
        assert record(d)["options"]["compression"] == "auto"


def test_rgba_alpha_becomes_internal_mask(rgba, tmp_path, capsys):
    code, _, err = run(capsys, rgba, "-o", str(tmp_path / "out"))
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "rgba.tif")) as d, rasterio.open(rgba) as s:
        src = s.read()
        assert d.count == 3
        assert d.mask_flag_enums[0] == [MaskFlags.per_dataset]
        m = d.read_masks(1)
        assert ((m > 0) == (src[3] > 0)).all()
        assert (d.read()[:, m > 0] == src[:3][:, m > 0]).all()
        with rasterio.open(d.name, OVERVIEW_LEVEL=0) as o:  # overviews have the mask too
            assert (o.read_masks(1) == 0).any() and (o.read_masks(1) > 0).any()


def test_source_mask_is_kept(tmp_path, capsys):
    path = tmp_path / "masked.tif"
    a = field(600, 600, 3).clip(0, 255).astype("uint8")
    write(path, a)
    y, x = np.mgrid[0:600, 0:600]
    valid = (x - 300) ** 2 + (y - 300) ** 2 < 250 ** 2
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as d:
        d.write_mask(np.where(valid, 255, 0).astype("uint8"))
    code, _, err = run(capsys, str(path), "-o", str(tmp_path / "out"), "--compression", "webp")
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "masked.tif")) as d:
        assert d.profile["compress"] == "webp" and d.count == 3
        assert d.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert np.array_equal(d.read_masks(1) > 0, valid)


def test_float_nodata_keeps_values_nodata_and_mask(floats, tmp_path, capsys):
    code, _, err = run(capsys, floats, "-o", str(tmp_path / "out"))
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "floats.tif")) as d, rasterio.open(floats) as s:
        assert d.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
        assert d.nodata == -9999 and d.dtypes[0] == "float32"
        assert d.mask_flag_enums[0] == [MaskFlags.per_dataset]
        a = d.read(1)
        assert np.array_equal(a, s.read(1))
        assert ((d.read_masks(1) == 0) == (a == -9999)).all()
        # overviews: averaged, and the mask agrees with nodata at every level
        for i in range(len(d.overviews(1))):
            with rasterio.open(d.name, OVERVIEW_LEVEL=i) as o:
                a, m = o.read(1), o.read_masks(1)
                assert ((m == 0) == (a == -9999)).all()
                assert len(np.unique(a)) > 1000  # not nearest of the noisy field only
        with rasterio.open(d.name, OVERVIEW_LEVEL=0) as o:
            v = o.read(1, window=((100, 110), (200, 210)))
            w = s.read(1, window=((200, 220), (400, 420)))
            expect = w.reshape(10, 2, 10, 2).mean(axis=(1, 3))
            assert np.allclose(v, expect, atol=1e-3)


def test_int16_predictor_and_values(ints, tmp_path, capsys):
    code, _, err = run(capsys, ints, "-o", str(tmp_path / "out"), "--compression", "deflate")
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "dem.tif")) as d, rasterio.open(ints) as s:
        assert d.profile["compress"] == "deflate"
        assert d.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert np.array_equal(d.read(), s.read())
        assert d.nodata is None and d.mask_flag_enums[0] == [MaskFlags.all_valid]


def test_png_without_georeference_takes_bounds_and_crs(tmp_path, capsys):
    png = write(tmp_path / "world.png", field(200, 400, 3).clip(0, 255).astype("uint8"),
                crs=None, driver="PNG")
    code, _, err = run(capsys, png, "-o", str(tmp_path / "out"))
    assert code == 2
    assert err.strip() == f"renderd-py: error: {png}: has no georeference; give --bounds W,S,E,N and --crs"
    code, _, err = run(capsys, png, "-o", str(tmp_path / "out"), "--bounds", "-180,-90,180,90")
    assert code == 2 and "has no CRS; give --crs" in err
    code, _, err = run(capsys, png, "-o", str(tmp_path / "out"), "--bounds", "-180,-90,180,90",
                       "--crs", "EPSG:4326")
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "world.tif")) as d, rasterio.open(png) as s:
        assert d.crs.to_epsg() == 4326
        assert tuple(d.bounds) == (-180, -90, 180, 90)
        assert np.array_equal(d.read(), s.read())


def test_reproject_into_a_relative_directory(floats, tmp_path, capsys, monkeypatch):
    """The warped VRT names the source's VRT by an absolute path, whatever -o is."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, floats, "-o", "out", "--reproject")
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "floats.tif")) as d:
        assert d.crs.to_epsg() == 3857


def test_reproject_lands_on_the_tile_grid(floats, tmp_path, capsys):
    code, _, err = run(capsys, floats, "-o", str(tmp_path / "out"), "--reproject")
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "floats.tif")) as d, rasterio.open(floats) as s:
        assert d.crs.to_epsg() == 3857
        # covers the source's bounds
        w, so, e, n = transform_bounds(s.crs, "EPSG:3857", *s.bounds)
        assert d.bounds.left <= w and d.bounds.right >= e
        assert d.bounds.bottom <= so and d.bounds.top >= n
        # resolution of a zoom level; every overview level on its zoom's grid
        world = 2 * MERC_HALF
        zoom = round(np.log2(world / 256 / d.res[0]))
        assert d.res[0] == pytest.approx(world / 256 / 2 ** zoom)
        levels = len(d.overviews(1))
        tile = world / 2 ** (zoom - levels)
        for v in ((d.bounds.left + MERC_HALF) / tile, (MERC_HALF - d.bounds.top) / tile):
            assert v == pytest.approx(round(v), abs=1e-6)
        assert d.width % (256 * 2 ** levels) == 0 and d.height % (256 * 2 ** levels) == 0
        # outside the source and its nodata: masked; nodata kept for the data
        assert d.nodata == -9999
        m, a = d.read_masks(1), d.read(1)
        assert (m == 0).any() and (m > 0).mean() > 0.1
        assert ((m == 0) == (a == -9999)).all()
        assert -9999 not in a[m > 0]


def test_jpeg_with_nodata_gets_a_mask_and_no_nodata(tmp_path, capsys):
    a = field(600, 600, 3).clip(1, 255).astype("uint8")
    a[:, :, :100] = 0
    src = write(tmp_path / "img.tif", a, nodata=0)
    code, _, err = run(capsys, src, "-o", str(tmp_path / "out"), "--compression", "jpeg",
                       "--quality", "90")
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "img.tif")) as d:
        assert d.profile["compress"] == "jpeg" and d.nodata is None
        assert d.mask_flag_enums[0] == [MaskFlags.per_dataset]
        m = d.read_masks(1)
        assert (m[:, :100] == 0).all() and (m[:, 100:] > 0).all()
        diff = np.abs(d.read().astype(int) - a)[:, :, 100:]
        assert diff.mean() < 5


def test_paletted_overviews_use_nearest(tmp_path, capsys):
    y, x = np.mgrid[0:800, 0:800]
    a = ((x // 7 + y // 11) % 4 * 3).astype("uint8")[None]   # classes 0, 3, 6, 9
    path = tmp_path / "classes.tif"
    write(path, a)
    with rasterio.open(path, "r+") as d:
        d.write_colormap(1, {0: (255, 0, 0, 255), 3: (0, 255, 0, 255), 6: (0, 0, 255, 255),
                             9: (9, 9, 9, 255)})
    code, _, err = run(capsys, str(path), "-o", str(tmp_path / "out"))
    assert code == 0, err
    with check_cog(str(tmp_path / "out" / "classes.tif")) as d:
        assert d.colormap(1)[6] == (0, 0, 255, 255)
        with rasterio.open(d.name, OVERVIEW_LEVEL=0) as o:
            assert set(np.unique(o.read(1))) <= {0, 3, 6, 9}
    code, _, err = run(capsys, str(path), "-o", str(tmp_path / "out2"), "--compression", "jpeg")
    assert code == 2 and "is paletted" in err


def test_band_selection_and_name(rgb, tmp_path, capsys):
    code, out, err = run(capsys, rgb, "-o", str(tmp_path / "out"), "--band", "3", "--name", "blue")
    assert code == 0, err
    with rasterio.open(tmp_path / "out" / "blue.tif") as d, rasterio.open(rgb) as s:
        assert d.count == 1 and np.array_equal(d.read(1), s.read(3))


# --- current outputs, atomic writes ------------------------------------------

def test_current_outputs_are_skipped(ints, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, ints, "-o", str(out))[0] == 0
    target = out / "dem.tif"
    before = target.stat().st_mtime_ns
    code, text, _ = run(capsys, ints, "-o", str(out))
    assert code == 0 and text.startswith("current") and target.stat().st_mtime_ns == before
    # other options: rewritten
    code, text, _ = run(capsys, ints, "-o", str(out), "--compression", "lzw")
    assert text.startswith("written")
    with rasterio.open(target) as d:
        assert d.profile["compress"] == "lzw"
    assert run(capsys, ints, "-o", str(out), "--compression", "lzw")[1].startswith("current")
    assert run(capsys, ints, "-o", str(out), "--compression", "lzw",
               "--overwrite")[1].startswith("written")
    # a changed source: rewritten
    st = os.stat(ints)
    os.utime(ints, ns=(st.st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert run(capsys, ints, "-o", str(out), "--compression", "lzw")[1].startswith("written")
    assert sorted(p.name for p in out.iterdir()) == ["dem.tif"]


def test_failed_write_leaves_nothing_under_the_final_name(ints, tmp_path, capsys, monkeypatch):
    import rasterio.shutil

    def broken(src, dst, **kw):
        Path(dst).write_bytes(b"II*\0partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(rasterio.shutil, "copy", broken)
    code, _, err = run(capsys, ints, "-o", str(tmp_path / "out"))
    assert code == 130
    assert list((tmp_path / "out").iterdir()) == []


def test_stale_temporaries_of_dead_runs_are_removed(ints, tmp_path, capsys):
    out = tmp_path / "out"
    stale = out / ".dem.tif.tmp-999999999-abc"     # no such process
    live = out / f".dem.tif.tmp-{os.getpid()}-abc"
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "cog.tif").write_bytes(b"partial")
    assert run(capsys, ints, "-o", str(out))[0] == 0
    assert not stale.exists() and live.exists()


def test_jobs(rgb, ints, floats, tmp_path, capsys):
    code, out, err = run(capsys, rgb, ints, floats, "-o", str(tmp_path / "out"), "--jobs", "2")
    assert code == 0, err
    assert "3 written, 0 current, 0 failed" in out
    for name in ("rgb", "dem", "floats"):
        validate(str(tmp_path / "out" / f"{name}.tif"))


# --- bad input -----------------------------------------------------------------

def test_bad_inputs_one_line_exit_2(rgb, floats, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a raster\n")
    good = tmp_path / "good.tif"
    rasterio.shutil.copy(rgb, good, driver="GTiff", tiled=True, compress="deflate")
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = str(tmp_path / "out")
    cases = [
        ([str(text)], f"{text}: not a raster GDAL can read"),
        ([str(corrupt)], f"{corrupt}: cannot be read (corrupt?)"),
        ([str(tmp_path / "missing.tif")], "missing.tif: not found"),
        ([floats, "--compression", "jpeg"], f"{floats}: jpeg needs 8-bit data, this is float32"),
        ([floats, "--compression", "webp"], f"{floats}: webp needs 8-bit data"),
        ([rgb, "--compression", "zip"], "Invalid value for '--compression'"),
        ([rgb, "--quality", "80"], "--quality applies to jpeg and webp only"),
        ([rgb, "--band", "4"], "has 3 band(s), no band 4"),
        ([rgb, "--bounds", "1,2,3"], "is not W,S,E,N"),
        ([rgb, "--crs", "EPSG:99999999"], "is not a CRS"),
        ([rgb, str(floats), "--name", "x.tif"], "--name needs exactly one FILE"),
        ([rgb, "-o", str(text)], f"-o {text} is not a directory"),
        ([rgb, "-o", str(text / "sub")], "cannot create it"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv, *([] if "-o" in argv else ["-o", out]))
        lines = err.strip().splitlines()
        assert code == 2, (argv, err)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (argv, err)
    assert not os.path.exists(out) or os.listdir(out) == []


def test_several_files_each_bad_one_reported_then_a_count(rgb, floats, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a raster\n")
    code, out, err = run(capsys, str(text), rgb, floats, "--compression", "jpeg", "-q",
                         "-o", str(tmp_path / "out"))
    assert code == 2
    assert err.splitlines() == [
        f"renderd-py: error: {text}: not a raster GDAL can read (not recognized as being in a "
        "supported file format)",
        f"renderd-py: error: {floats}: jpeg needs 8-bit data, this is float32; use "
        "--compression auto (lossless)",
        "renderd-py: error: 2 of 3 files failed",
    ]
    assert "1 written, 0 current, 2 failed" in out
    assert os.listdir(tmp_path / "out") == ["rgb.tif"]


# --- names and times -----------------------------------------------------------

def test_names():
    assert cog.output_name("data/bmng.jpg") == "bmng.tif"
    assert cog.output_name("a/b/x.tif") == "x.tif"
    sst = str(SAMPLE / "HadISST1_SST_update.nc")
    if os.path.exists(sst):
        assert cog.output_name(f"netcdf:{sst}:sst") == "HadISST1_SST_update_sst.tif"
        assert cog.source_file(f"netcdf:{sst}:sst") == sst
        assert cog.source_file(f'netcdf:"{sst}":sst') == sst


def test_cf_time_decoding():
    # CF's standard calendar is Julian before 1582-10-15: HadISST's first month
    assert decode(17633208, "hours since 1-1-1 00:00:0.0").isoformat() == "2012-08-01T00:00:00"
    assert decode(17633208, "hours since 1-1-1", "proleptic_gregorian").day == 3
    assert decode(10, "days since 1582-10-04").isoformat() == "1582-10-24T00:00:00"
    assert decode(36, "hours since 1970-01-01 12:00").isoformat() == "1970-01-03T00:00:00"
    with pytest.raises(ValueError):
        decode(1, "days since 2000-01-01", "360_day")


def test_mercator_grid_for_the_whole_world():
    g = cog.mercator_grid("EPSG:4326", (360 / 5400, 0, -180, 0, -180 / 2700, 90), 5400, 2700, 512)
    assert (g.zoom, g.levels, g.width, g.height) == (4, 3, 4096, 4096)
    assert g.transform[2] == -MERC_HALF and g.transform[5] == MERC_HALF


# --- the sample data (scripts/fetch-sample-data --raster) ----------------------

needs_sample = pytest.mark.skipif(not (SAMPLE / "HadISST1_SST_update.nc").exists(),
                                  reason="no sample rasters (scripts/fetch-sample-data --raster)")


@needs_sample
def test_sample_sst_month(tmp_path, capsys):
    name = f"netcdf:{SAMPLE / 'HadISST1_SST_update.nc'}:sst"
    code, _, err = run(capsys, name, "--crs", "EPSG:4326", "--band", "1", "--name",
                       "sst_2012-08.tif", "-o", str(tmp_path))
    assert code == 0, err
    with check_cog(str(tmp_path / "sst_2012-08.tif")) as d, rasterio.open(name) as s:
        assert (d.width, d.height, d.dtypes[0]) == (360, 180, "float32")
        assert d.nodata == pytest.approx(-1e30) and MaskFlags.per_dataset in d.mask_flag_enums[0]
        assert np.array_equal(d.read(1), s.read(1))
        assert (d.read_masks(1) == 0).sum() == (s.read_masks(1) == 0).sum() > 10000   # land
        assert d.tags(1)["units"] == "degC" and d.tags(1)["NETCDF_DIM_time"] == "17633208"


@needs_sample
def test_sample_blue_marble_jpeg(tmp_path, capsys):
    code, _, err = run(capsys, str(SAMPLE / "bmng.jpg"), "--bounds", "-180,-90,180,90",
                       "--crs", "EPSG:4326", "--compression", "jpeg", "-o", str(tmp_path))
    assert code == 0, err
    with check_cog(str(tmp_path / "bmng.tif")) as d:
        assert (d.width, d.height, d.count) == (5400, 2700, 3)
        assert d.profile["compress"] == "jpeg" and d.overviews(1) == [2, 4, 8, 16]
        assert tuple(d.bounds) == (-180, -90, 180, 90)
