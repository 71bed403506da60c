"""``renderd-py pipeline run`` end to end: real rasters written at test time,
the whole stack (``renderd-py up``: nginx, the daemon and its workers, the
disk store), the catalog on SQLite and on the real PostgreSQL.

Every stage type runs on real files; the stages overlap (a dataset is
ingested before the last COG is written, a metatile rendered before the
last dataset is ingested, written before the last one is rendered); a
second run does nothing and says what it skipped; a run stopped with SIGINT
and run again does no work twice (COGs written, datasets ingested and
metatiles rendered, counted by the pipeline and by the daemon); the daemon
down, at the start or during the run, fails the run with one line, and the
run resumes once it is back."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from renderd.client import Client
from tests.fixtures.catalog import write_raster
from tests.fixtures.stack import renderd_py

pytestmark = pytest.mark.slow

LAYERS = """
[catalog]
url = "{catalog}"

[[layer]]
name = "temp"
kind = "raster"
collection = "temp"
keys = ["month"]
colormap = "viridis"
rescale = "0,100"
maxzoom = 8

[[layer]]
name = "land"
kind = "raster"
collection = "land"
rescale = "0,100"
colormap = "terrain"
maxzoom = 8

[[layer]]
name = "smooth"
kind = "raster"
collection = "land"
rescale = "0,100"
colormap = "terrain"
resampling = "average"
maxzoom = 8
"""


def month_raster(path: Path, month: int, west: float = -20.0, north: float = 60.0,
                 size: tuple[int, int] = (300, 300), res: float = 0.2) -> Path:
    """A float32 raster with nodata in a corner, values by month."""
    rows, cols = np.mgrid[0:size[0], 0:size[1]]
    data = ((rows + cols) / 12.0 + month * 3).astype(np.float32)
    data[rows + cols < 60] = -999.0
    write_raster(path, data[None], transform=from_origin(west, north, res, res), nodata=-999.0,
                 block=None)
    return path


def write_pipeline(dir: Path, stages: list[dict], name: str = "p.json") -> Path:
    p = dir / name
    p.write_text(json.dumps(stages, indent=1))
    return p


def pipeline(stack, file: Path, *extra: str, timeout: float = 300) -> tuple[int, dict | None, str]:
    """Exit status, the --json summary and stderr of a run."""
    env = dict(os.environ, RENDERD_PY_PROGRESS_INTERVAL="0.2")
    r = subprocess.run(renderd_py() + ["pipeline", "run", "--json", "-c", str(stack.config), str(file),
                                       *extra], capture_output=True, text=True, timeout=timeout,
                       cwd=str(stack.dir), env=env)
    doc = json.loads(r.stdout) if r.stdout.strip() else None
    return r.returncode, doc, r.stderr


def stage_report(doc: dict, n: int) -> dict:
    return doc["stages"][n - 1]


def daemon_rendered(stack) -> int:
    with Client(f"ipc://{stack.dir / 'broker.sock'}", timeout=5) as c:
        return int(c.status()["counters"].get("rendered", 0))


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'catalog.sqlite'}"
    return request.getfixturevalue("pg_catalog_url")


def months_pipeline(tmp_path: Path, zoom: str = "0-5", months: int = 4, path: str = "out/temp_{month}.mbtiles"):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for m in range(1, months + 1):
        if not (src / f"temp_{m:02d}.tif").exists():
            month_raster(src / f"temp_{m:02d}.tif", m)
    return write_pipeline(tmp_path, [
        {"type": "read.files", "pattern": "src/temp_{month}.tif"},
        {"type": "transform.optimize", "output": "cogs", "blocksize": 256},
        {"type": "write.catalog", "collection": "temp"},
        {"type": "transform.pyramid", "layer": "temp", "zoom": zoom},
        {"type": "write.mbtiles", "path": path},
    ])


def test_files_to_a_served_layer_and_extracts(stack_factory, tmp_path, catalog):
    s = stack_factory(layers=LAYERS.format(catalog=catalog))
    p = months_pipeline(tmp_path)
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    read, opt, ing, pyr, out = (stage_report(doc, i) for i in range(1, 6))
    assert (read["rasters"], opt["written"], opt["current"]) == (4, 4, 0)
    assert (ing["ingested"], ing["skipped"]) == (4, 0)
    assert pyr["tilesets"] == pyr["tilesets_done"] == 4
    assert pyr["rendered"] == pyr["metatiles"] > 4 and pyr["failed"] == 0
    assert out["written"] == 4
    # a progress line per stage
    for n, kind in enumerate(("read.files", "transform.optimize", "write.catalog", "transform.pyramid",
                              "write.mbtiles"), start=1):
        assert f"progress: stage {n} ({kind}): " in err
    assert daemon_rendered(s) == pyr["rendered"]
    # served from the store: rendered by the pipeline, not on request
    r = s.get("/tiles/temp/02/4/7/5.png")
    assert r.status == 200 and r.headers["x-cache"] == "STORE", (r.status, r.headers)
    with sqlite3.connect(tmp_path / "out" / "temp_02.mbtiles") as db:
        (blob,) = db.execute("SELECT tile_data FROM tiles WHERE zoom_level=4 AND tile_column=7 "
                             "AND tile_row=?", (2 ** 4 - 1 - 5,)).fetchone()
        meta = dict(db.execute("SELECT name, value FROM metadata"))
    assert blob == r.body
    assert (meta["name"], meta["minzoom"], meta["maxzoom"]) == ("temp/02", "0", "5")
    # the second run does nothing and says so
    code, again, err = pipeline(s, p)
    assert code == 0, err
    opt, ing, pyr, out = (stage_report(again, i) for i in range(2, 6))
    assert (opt["written"], opt["current"]) == (0, 4)
    assert (ing["ingested"], ing["skipped"]) == (0, 4)
    assert (pyr["rendered"], pyr["skipped"]) == (0, pyr["metatiles"])
    assert (out["written"], out["current"]) == (0, 4)
    assert daemon_rendered(s) == stage_report(doc, 4)["rendered"]
    code, _, _ = pipeline(s, p, "--quiet")
    r = subprocess.run(renderd_py() + ["pipeline", "run", "-c", str(s.config), str(p)],
                       capture_output=True, text=True, cwd=str(s.dir), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"pipeline done: {p} in ")
    assert lines[1:] == [
        "  stage 1 (read.files): 4 rasters from 4 files",
        f"  stage 2 (transform.optimize): 4 rasters into {tmp_path / 'cogs'}: 0 written, 4 current (skipped)",
        "  stage 3 (write.catalog): 4 datasets into collection temp: 0 ingested, 0 updated, 0 unchanged, "
        "4 skipped (same size and mtime)",
        f"  stage 4 (transform.pyramid): layer temp, zooms 0-5, 4 of 4 tile sets: {pyr['metatiles']} "
        f"metatiles: 0 rendered, {pyr['metatiles']} skipped (stored), 0 failed",
        "  stage 5 (write.mbtiles): 4 files: 0 written, 4 current (skipped: the same tiles)",
        *[f"    {tmp_path / 'out' / f'temp_0{m}.mbtiles'}: current" for m in range(1, 5)],
    ]


def test_the_stages_overlap(stack_factory, tmp_path):
    """Each stage starts on the first items of the one before: a dataset is
    ingested before the last COG is written, a metatile rendered before the
    last dataset is ingested, written before the last one is rendered."""
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    (tmp_path / "src").mkdir()
    for m in range(1, 9):   # about 0.3 s to convert each; 6 ms to ingest its header
        month_raster(tmp_path / "src" / f"temp_{m:02d}.tif", m, size=(2000, 2000), res=0.03)
    p = months_pipeline(tmp_path, months=8)
    doc = json.loads(p.read_text())
    doc[2]["stats"] = False        # (the layer's rescale is fixed: ingesting a header is enough)
    p.write_text(json.dumps(doc))
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    opt, ing, pyr, out = (stage_report(doc, i) for i in range(2, 6))
    assert ing["first"] < opt["last"], (ing, opt)
    assert pyr["first"] < ing["last"], (pyr, ing)
    assert out["first"] < pyr["last"], (out, pyr)


def test_a_changed_file_goes_through_again(stack_factory, tmp_path):
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    p = months_pipeline(tmp_path, zoom="0-3", months=2)
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    before = (tmp_path / "out" / "temp_02.mbtiles").read_bytes()
    time.sleep(1.1)
    month_raster(tmp_path / "src" / "temp_02.tif", 20)
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    opt, ing, pyr, out = (stage_report(doc, i) for i in range(2, 6))
    assert (opt["written"], opt["current"]) == (1, 1)
    assert (ing["updated"], ing["skipped"]) == (1, 1)
    # the changed dataset's stored metatiles were marked stale by the ingest, so rendered again
    assert pyr["rendered"] == pyr["metatiles"] // 2 and pyr["skipped"] == pyr["metatiles"] // 2
    assert ing["stale"] == {"temp/02": pyr["metatiles"] // 2}
    assert (out["written"], out["current"]) == (1, 1)
    assert (tmp_path / "out" / "temp_02.mbtiles").read_bytes() != before


def test_a_mosaic_is_rendered_once_both_halves_are_in(stack_factory, tmp_path):
    """Two rasters side by side in one tile set: a metatile over both is
    rendered once the second arrived, and is what a render from the final
    catalog gives."""
    from renderd import config as _config
    from renderd.render import render_tile_png
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    (tmp_path / "src").mkdir()
    month_raster(tmp_path / "src" / "land_a.tif", 1, west=-20.0)
    month_raster(tmp_path / "src" / "land_b.tif", 9, west=40.0)
    p = write_pipeline(tmp_path, [
        {"type": "read.files", "pattern": "src/land_{}.tif"},
        {"type": "transform.optimize", "output": "cogs"},
        {"type": "write.catalog", "collection": "land"},
        {"type": "transform.pyramid", "layer": "land", "zoom": "2-6"},
        {"type": "write.pmtiles", "path": "out/land.pmtiles"},
    ])
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    cfg = _config.load(s.config)
    lyr = cfg.layer("land")
    for z, x, y in ((4, 8, 5), (5, 18, 10), (6, 38, 21)):      # over lon 40: both rasters
        served = s.get(f"/tiles/land/{z}/{x}/{y}.png")
        assert served.status == 200 and served.headers["x-cache"] == "STORE"
        assert served.body == render_tile_png(lyr, z, x, y, catalog_url=cfg.catalog.url)
    from pmtiles.reader import MmapSource, Reader
    with open(tmp_path / "out" / "land.pmtiles", "rb") as f:
        assert Reader(MmapSource(f)).get(4, 8, 5) == s.get("/tiles/land/4/8/5.png").body


def test_failed_metatiles_end_the_run_with_1_after_writing_the_rest(stack_factory, tmp_path):
    """A dataset's file gone after ingest: the metatiles over it fail, the
    others are rendered and written, and the run ends with status 1."""
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    (tmp_path / "src").mkdir()
    month_raster(tmp_path / "src" / "land_a.tif", 1, west=-20.0)
    month_raster(tmp_path / "src" / "land_b.tif", 9, west=40.0)
    p = write_pipeline(tmp_path, [
        {"type": "read.files", "pattern": "src/land_{}.tif"},
        {"type": "transform.optimize", "output": "cogs"},
        {"type": "write.catalog", "collection": "land"},
    ])
    code, _, err = pipeline(s, p)
    assert code == 0, err
    (tmp_path / "cogs" / "land_b.tif").unlink()
    p2 = write_pipeline(tmp_path, [
        {"type": "read.catalog", "collection": "land"},
        {"type": "transform.pyramid", "layer": "land", "zoom": "4-6", "mode": "force"},
        {"type": "write.pmtiles", "path": "out/land.pmtiles"},
    ], "p2.json")
    code, doc, err = pipeline(s, p2)
    assert code == 1, err
    pyr, out = stage_report(doc, 2), stage_report(doc, 3)
    assert pyr["failed"] > 0 and pyr["rendered"] > 0 and pyr["rendered"] + pyr["failed"] == pyr["metatiles"]
    assert out["files"][0]["status"] == "written" and out["files"][0]["missing"] > 0
    errors = [ln for ln in err.splitlines() if not ln.startswith("progress: ")]
    assert len(errors) == 1 and re.fullmatch(
        rf"renderd-py: error: stage 2 \(transform\.pyramid\): {pyr['failed']} metatiles failed: "
        rf"\d+/\d+/\d+: FAIL: dataset {re.escape(str(tmp_path / 'cogs' / 'land_b.tif'))} is gone .*",
        errors[0]), errors
    assert doc["incomplete"] and doc["error"] is None


def test_lower_zooms_from_the_next_zooms_tiles(stack_factory, tmp_path):
    """A layer whose resampling averages: two zooms of every three below the
    highest are built by the daemon's workers from the next zoom's stored
    tiles, the others rendered from the sources. (At the edges of an area a
    metatile whose children are not all stored is rendered from the sources:
    here the raster covers the world.)"""
    from renderd import config as _config
    from renderd.render import render_tile_png
    from renderd.render.pyramid import from_children
    from renderd.store import open_store
    from renderd.tilemath import Meta, Tile
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    (tmp_path / "src").mkdir()
    month_raster(tmp_path / "src" / "land_a.tif", 1, west=-180.0, north=85.0, size=(340, 720), res=0.5)
    p = write_pipeline(tmp_path, [
        {"type": "read.files", "pattern": "src/land_{}.tif"},
        {"type": "transform.optimize", "output": "cogs"},
        {"type": "write.catalog", "collection": "land"},
        {"type": "transform.pyramid", "layer": "smooth", "zoom": "1-5"},
        {"type": "write.mbtiles", "path": "out/smooth.mbtiles"},
    ])
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    pyr = stage_report(doc, 4)
    assert pyr["tiles_zooms"] == [1, 3, 4]
    assert pyr["rendered"] == pyr["metatiles"] and pyr["from_tiles"] == 1 + 1 + 4
    cfg = _config.load(s.config)
    lyr = cfg.layer("smooth")
    with open_store(cfg.store) as store:
        for m in (Meta(4, 0, 8, 8), Meta(4, 8, 0, 8), Meta(3, 0, 0, 8), Meta(1, 0, 0, 2)):
            want = from_children(store, "smooth", m, lyr, memo=None)
            assert want is not None, m
            assert store.get_index("smooth", m).hashes == want.hashes, m
        for z, x, y in ((2, 1, 2), (5, 20, 12)):               # rendered from the sources
            got = store.read_tile("smooth", Tile(z, x, y))
            assert got.data == render_tile_png(lyr, z, x, y, catalog_url=cfg.catalog.url), (z, x, y)
    # every zoom from the sources when asked: now as a render gives them
    doc2 = json.loads(p.read_text())
    doc2[3].update(lower_zooms="sources", mode="force")
    p.write_text(json.dumps(doc2))
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    assert stage_report(doc, 4)["tiles_zooms"] == [] and stage_report(doc, 4)["from_tiles"] == 0
    with open_store(cfg.store) as store:
        got = store.read_tile("smooth", Tile(4, 9, 10))
    assert got.data == render_tile_png(lyr, 4, 9, 10, catalog_url=cfg.catalog.url)


def test_reproject_read_catalog_and_read_store(stack_factory, tmp_path):
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    (tmp_path / "src").mkdir()
    month_raster(tmp_path / "src" / "temp_07.tif", 7)
    p = write_pipeline(tmp_path, [
        {"type": "read.files", "pattern": "src/temp_{month}.tif"},
        {"type": "transform.reproject", "crs": "EPSG:3857", "output": "merc"},
        {"type": "transform.reproject", "crs": "EPSG:32633", "output": "utm", "resampling": "nearest"},
        {"type": "write.catalog", "collection": "temp"},
        {"type": "transform.pyramid", "layer": "temp", "zoom": "1-4", "bbox": "0,30,20,50"},
    ])
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    import rasterio
    with rasterio.open(tmp_path / "merc" / "temp_07.tif") as d:
        assert d.crs.to_epsg() == 3857
        zoom = np.log2(2 * 20037508.3428 / 256 / d.res[0])
        assert zoom == pytest.approx(round(zoom)), "on the tile grid of a zoom"
    with rasterio.open(tmp_path / "utm" / "temp_07.tif") as d:
        assert d.crs.to_epsg() == 32633
    rendered = stage_report(doc, 5)["rendered"]
    assert rendered == stage_report(doc, 5)["metatiles"] > 0
    # what is in the catalog, again and forced; then what is stored, into a file
    p2 = write_pipeline(tmp_path, [
        {"type": "read.catalog", "collection": "temp", "where": {"month": "07"}},
        {"type": "transform.pyramid", "layer": "temp/07", "zoom": "1-4", "bbox": "0,30,20,50",
         "mode": "force"},
        {"type": "write.pmtiles", "path": "out/forced.pmtiles"},
    ], "p2.json")
    code, doc2, err = pipeline(s, p2)
    assert code == 0, err
    assert stage_report(doc2, 1)["datasets"] == 1
    assert stage_report(doc2, 2)["rendered"] == rendered
    p3 = write_pipeline(tmp_path, [
        {"type": "read.store", "layer": "temp", "zoom": "1-4"},
        {"type": "write.mbtiles", "path": "out/stored_{month}.mbtiles"},
    ], "p3.json")
    code, doc3, err = pipeline(s, p3)
    assert code == 0, err
    assert stage_report(doc3, 1)["metatiles"] == rendered
    files = stage_report(doc3, 2)["files"]
    assert [f["tileset"] for f in files] == ["temp/07"] and files[0]["status"] == "written"
    from pmtiles.reader import MmapSource, all_tiles
    with open(tmp_path / "out" / "forced.pmtiles", "rb") as f:
        forced = dict(all_tiles(MmapSource(f)))
    with sqlite3.connect(tmp_path / "out" / "stored_07.mbtiles") as db:
        stored = {(z, x, (1 << z) - 1 - y): b for z, x, y, b in
                  db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")}
    assert set(forced) <= set(stored) and all(stored[k] == v for k, v in forced.items())


def wait_for(proc: subprocess.Popen, lines: list[str], pattern: str, timeout: float = 120.0) -> None:
    """Read ``proc``'s stderr into ``lines`` until a line matches ``pattern``."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the pipeline ended first: {''.join(lines)[-2000:]}")
        lines.append(line)
        if rx.search(line):
            return
    raise AssertionError(f"no line matching {pattern!r}: {''.join(lines)[-2000:]}")


def world_months(tmp_path: Path, months: int) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for m in range(1, months + 1):
        month_raster(src / f"temp_{m:02d}.tif", m, west=-180.0, north=85.0, size=(340, 720), res=0.5)
    return src


def spawn(stack, file: Path) -> subprocess.Popen:
    env = dict(os.environ, RENDERD_PY_PROGRESS_INTERVAL="0.2")
    return subprocess.Popen(renderd_py() + ["pipeline", "run", "--json", "-c", str(stack.config), str(file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(stack.dir),
                            env=env)


def test_interrupted_and_run_again_does_no_work_twice(stack_factory, tmp_path):
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    world_months(tmp_path, 5)
    p = months_pipeline(tmp_path, zoom="0-6", months=5)
    proc = spawn(s, p)
    err: list[str] = []
    wait_for(proc, err, r"stage 4 \(transform\.pyramid\): ([2-9]\d|\d{3,})/")
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=120)
    err.append(rest)
    assert proc.returncode == 130, "".join(err)[-2000:]
    assert "renderd-py: pipeline stopped; run it again to continue" in rest
    first = json.loads(out)
    assert first["interrupted"] is True and first["error"] is None
    code, second, e2 = pipeline(s, p)
    assert code == 0, e2
    runs = (first, second)
    total_metatiles = stage_report(second, 4)["metatiles"]
    assert sum(stage_report(d, 2)["written"] for d in runs) == 5
    assert sum(stage_report(d, 3)["ingested"] for d in runs) == 5
    assert sum(stage_report(d, 4)["rendered"] for d in runs) == total_metatiles
    assert sum(stage_report(d, 5)["written"] for d in runs) == 5
    assert stage_report(first, 4)["rendered"] > 0 and stage_report(second, 4)["rendered"] > 0
    assert daemon_rendered(s) == total_metatiles, "the daemon rendered each metatile once"
    assert not list((tmp_path / "out").glob("*.part-*")), "no partial extract is left"
    assert not list((tmp_path / "cogs").glob(".*.tmp-*")), "no partial COG is left"


def test_the_daemon_down_fails_with_one_line_and_resumes(stack_factory, tmp_path):
    s = stack_factory(start=False, layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    world_months(tmp_path, 4)
    p = months_pipeline(tmp_path, zoom="0-6", months=4)
    doc = json.loads(p.read_text())
    doc[3]["timeout"] = 8          # (a daemon gone silent is noticed after min(30 s, timeout))
    p.write_text(json.dumps(doc))
    r = subprocess.run(renderd_py() + ["pipeline", "run", "-c", str(s.config), str(p)], capture_output=True,
                       text=True, cwd=str(s.dir), timeout=120)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"renderd-py: error: stage 4 (transform.pyramid): no daemon answers at "
                        f"ipc://{s.dir / 'broker.sock'} (is `renderd-py serve` running?); run the pipeline "
                        "again when it answers\n")
    assert not (tmp_path / "cogs").exists() or not any((tmp_path / "cogs").iterdir())
    # up, then down while the pyramid renders
    s.start()
    proc = spawn(s, p)
    err: list[str] = []
    wait_for(proc, err, r"stage 4 \(transform\.pyramid\): ([2-9]\d|\d{3,})/")
    rendered_before = daemon_rendered(s)
    assert s.stop() == 0
    out, rest = proc.communicate(timeout=120)
    assert proc.returncode == 1, rest[-2000:]
    errors = [ln for ln in rest.splitlines() if not ln.startswith(("progress: ", "stopping"))]
    assert len(errors) == 1, rest[-2000:]
    assert re.fullmatch(rf"renderd-py: error: stage 4 \(transform\.pyramid\): the daemon at "
                        rf"{re.escape(f'ipc://{s.dir}/broker.sock')} (is shutting down|stopped answering); "
                        r"run the pipeline again when it is back", errors[0]), errors[0]
    first = json.loads(out)
    s.start()
    code, second, e2 = pipeline(s, p)
    assert code == 0, e2
    total = stage_report(second, 4)["metatiles"]
    runs = (first, second)
    assert sum(stage_report(d, 2)["written"] for d in runs) == 4
    assert sum(stage_report(d, 3)["ingested"] for d in runs) == 4
    # each metatile rendered once: by the first daemon (before or while it stopped) or the second
    assert stage_report(second, 4)["rendered"] + stage_report(second, 4)["skipped"] == total
    assert rendered_before <= stage_report(second, 4)["skipped"]
    assert daemon_rendered(s) == stage_report(second, 4)["rendered"]
    # (a month's extract finished before the daemon stopped is current now)
    assert sum(stage_report(d, 5)["written"] for d in runs) == 4
    assert stage_report(second, 5)["written"] + stage_report(second, 5)["current"] == 4


def test_split_bands_and_files_straight_into_the_catalog(stack_factory, tmp_path):
    """One raster per band of a three-band file (keyed by band number), its
    COGs named with the key; and GeoTIFFs ingested as they are."""
    import rasterio
    s = stack_factory(layers=LAYERS.format(catalog=f"sqlite://{tmp_path / 'catalog.sqlite'}"))
    (tmp_path / "src").mkdir()
    data = np.stack([np.full((100, 200), v, np.float32) for v in (10, 20, 30)])
    write_raster(tmp_path / "src" / "three.tif", data, transform=from_origin(-10.0, 50.0, 0.1, 0.1))
    p = write_pipeline(tmp_path, [
        {"type": "read.files", "pattern": "src/three.tif", "split_bands": {"key": "month", "value": "band"}},
        {"type": "transform.optimize", "output": "cogs", "name": "temp_{month}.tif"},
        {"type": "write.catalog", "collection": "temp"},
        {"type": "transform.pyramid", "layer": "temp", "zoom": "2-4"},
    ])
    code, doc, err = pipeline(s, p)
    assert code == 0, err
    assert stage_report(doc, 1)["rasters"] == 3 and stage_report(doc, 4)["tilesets"] == 3
    for band, value in ((1, 10), (2, 20), (3, 30)):
        with rasterio.open(tmp_path / "cogs" / f"temp_{band}.tif") as d:
            assert d.count == 1 and float(d.read(1).mean()) == value
    assert s.get("/tiles/temp/2/4/7/5.png").headers.get("x-cache") == "STORE"
    # files that are rasters already: straight into the catalog
    month_raster(tmp_path / "src" / "land_a.tif", 1)
    p2 = write_pipeline(tmp_path, [
        {"type": "read.files", "pattern": "src/land_{}.tif"},
        {"type": "write.catalog", "collection": "land", "stats": False},
        {"type": "transform.pyramid", "layer": "land", "zoom": "3-4"},
    ], "p2.json")
    code, doc, err = pipeline(s, p2)
    assert code == 0, err
    assert stage_report(doc, 2)["ingested"] == 1 and stage_report(doc, 3)["rendered"] > 0
