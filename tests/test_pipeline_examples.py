"""The pipelines in examples/pipelines/ on the sample data (data/raster, as
scripts/fetch-sample-data fetches it): each passes ``pipeline check``
against config/demo.toml, and each runs end to end (copied into a temp dir
beside a link to data/, so that their ``../../var`` is the test's) through
the whole stack with the demo's raster layers: raw files to a served layer
and an MBTiles or PMTiles extract."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from renderd.cli.main import main
from tests.fixtures.stack import renderd_py

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "pipelines"
SAMPLES = ("bmng.jpg", "shadedrelief.jpg", "etopo1.jpg", "HadISST1_SST_update.nc")


def demo_layers(catalog: str) -> str:
    """The raster part of config/demo.toml, with the catalog at ``catalog``."""
    text = (ROOT / "config" / "demo.toml").read_text()
    part = text[text.index("[catalog]"):]
    lines = [f'url = "{catalog}"' if ln.startswith("url =") else ln for ln in part.splitlines()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_examples_pass_check_against_the_demo_configuration(capsys, example):
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "check", "-c", str(ROOT / "config" / "demo.toml"), str(EXAMPLES / example)])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    assert e.value.code in (0, None), err
    assert out.startswith(f"pipeline {EXAMPLES / example}: ")


@pytest.fixture
def sample_tree(tmp_path):
    data = ROOT / "data" / "raster"
    missing = [f for f in SAMPLES if not (data / f).exists()]
    if missing:
        pytest.skip(f"sample rasters missing ({', '.join(missing)}): run scripts/fetch-sample-data")
    (tmp_path / "examples").mkdir()
    shutil.copytree(EXAMPLES, tmp_path / "examples" / "pipelines")
    (tmp_path / "data").symlink_to(ROOT / "data")
    return tmp_path


def run(stack, tree: Path, example: str) -> dict:
    r = subprocess.run(renderd_py() + ["pipeline", "run", "--json", "-q", "-c", str(stack.config),
                                       str(tree / "examples" / "pipelines" / example)],
                       capture_output=True, text=True, timeout=600, cwd=str(tree))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_examples_on_the_sample_data(stack_factory, sample_tree):
    tree = sample_tree
    var = tree / "var"
    s = stack_factory(start=False, layers=demo_layers(f"sqlite://{var / 'catalog.sqlite'}"))
    # a COG made as scripts/prepare-rasters makes it is current for the pipeline
    r = subprocess.run(renderd_py() + ["optimize-rasters", "-q", "-o", str(var / "rasters"),
                                       str(tree / "data" / "raster" / "bmng.jpg"), "--bounds", "-180,-90,180,90",
                                       "--crs", "EPSG:4326", "--compression", "jpeg"],
                       capture_output=True, text=True, timeout=300, cwd=str(tree))
    assert r.returncode == 0, r.stderr
    s.start()

    bm = run(s, tree, "bluemarble.json")["stages"]
    assert (bm[1]["written"], bm[1]["current"]) == (0, 1)
    assert bm[2]["ingested"] == 1 and bm[3]["rendered"] == bm[3]["metatiles"] == 24
    assert bm[4]["files"][0]["status"] == "written"
    relief = run(s, tree, "relief.json")["stages"]
    assert relief[1]["written"] == 1 and relief[3]["rendered"] == 24
    sst = run(s, tree, "sst.json")["stages"]
    assert sst[0]["rasters"] == 1 and sst[3]["tilesets"] == 1
    assert (var / "rasters" / "sst_2012-08.tif").exists(), "named as scripts/prepare-rasters names it"

    # served layers, from the store
    for path in ("/tiles/bluemarble/3/4/2.jpg", "/tiles/relief/5/16/10.png", "/tiles/sst/2012-08/2/1/1.png"):
        got = s.get(path)
        assert got.status == 200 and got.headers["x-cache"] == "STORE", (path, got.status, got.headers)
    # the extracts
    from pmtiles.reader import MmapSource, Reader
    with open(var / "extracts" / "bluemarble.pmtiles", "rb") as f:
        reader = Reader(MmapSource(f))
        assert reader.header()["max_zoom"] == 5
        assert reader.get(3, 4, 2) == s.get("/tiles/bluemarble/3/4/2.jpg").body
    with sqlite3.connect(var / "extracts" / "relief.mbtiles") as db:
        assert db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0] == sum(4 ** z for z in range(6))
    assert (var / "extracts" / "sst_2012-08.pmtiles").exists()

    europe = run(s, tree, "europe.json")["stages"]
    assert europe[0]["missing"] == 0 and europe[1]["written"] == 1
    with sqlite3.connect(var / "extracts" / "bluemarble-europe.mbtiles") as db:
        n = db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        bounds = dict(db.execute("SELECT name, value FROM metadata"))["bounds"]
    assert 0 < n < sum(4 ** z for z in range(6)) and bounds.startswith("-25.0000000,34.0000000")
    rerender = run(s, tree, "relief-rerender.json")["stages"]
    assert rerender[1]["rendered"] == rerender[1]["metatiles"] > 0
    etopo = run(s, tree, "etopo1-mercator.json")["stages"]
    assert etopo[2]["written"] == 1 and etopo[3]["ingested"] == 1
    import rasterio
    with rasterio.open(var / "rasters" / "mercator" / "etopo1.tif") as d:
        assert d.crs.to_epsg() == 3857

    # run again: nothing to do
    again = run(s, tree, "bluemarble.json")["stages"]
    assert (again[1]["current"], again[2]["skipped"], again[3]["skipped"], again[4]["current"]) == (1, 1, 24, 1)
    assert not any(p.name.startswith(".") or ".part-" in p.name for p in (var / "extracts").iterdir())
    assert os.path.getsize(var / "extracts" / "bluemarble.pmtiles") > 0
