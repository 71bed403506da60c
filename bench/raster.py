#!/usr/bin/env python3
"""Raster tiles: rio-tiler tile by tile against the raster renderer, in one run.

On the same COGs and the same tiles (whole metatiles at zooms 2-8, some
fully covered, some partly, some with no data at all):

(a) rio-tiler: ``Reader.tile`` + ``ImageData.render`` per tile (rescale and
    colormap where the case has them), GDAL's encoders with rio-tiler's
    profiles (PNG zlevel 6, JPEG quality 85), 1 process, the Reader opened
    for each tile as a tile server opens it for each request; and the same
    with 2 processes;
(a') the same with one Reader kept open across all tiles (GDAL's block
    cache then keeps decoded blocks from tile to tile): the peer at its
    best, a bound rather than what a server does;
(b) the raster renderer in-process, metatile by metatile, 1 process;
(c) ``renderd-py serve`` with 2 workers writing to the disk store;
(d) the dynamic path: ``renderd-py up`` (nginx + Lua, the daemon, the disk
    store), one request for a tile of a metatile never rendered, its
    latency against rio-tiler's time for that one tile and (b)'s for the
    metatile, taking turns.

Every side finds its datasets in one SQLite catalog that ``renderd-py
ingest`` fills (a collection per case); the rescale percentiles are the
catalog's.

Nearest resampling throughout. Prints per case tiles/s and CPU ms per tile,
the ratios (b)/(a) and (c)/(a, 2 processes), where the time goes, the
encodes deduplication saved, and the share of pixels identical to (a)'s.

Cases: shaded relief as a JPEG-compressed COG to PNG, as a DEFLATE COG to
PNG, the JPEG COG to JPEG; HadISST SST (float32, nodata) to a viridis PNG
(rescale p2,p98 from the catalog's statistics); the SST upsampled 16x
(a larger float32 COG with overviews) to a viridis PNG. The COGs are made
from data/raster (scripts/fetch-sample-data --raster) with rasterio's COG
driver and kept in --cache; without the samples the bench makes synthetic
stand-ins of the same kinds and says so.

Usage: .venv/bin/python bench/raster.py [--cases a,b] [--no-daemon] [--no-nginx] [--no-two]
                                        [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE] + [_HERE]

from common import ROOT, cpu_seconds, free_port, render_all, start_daemon, stop_daemon  # noqa: E402
from renderd.client import Client  # noqa: E402
from renderd.tilemath import Meta, Tile, meta_tiles  # noqa: E402
from tests.fixtures.rasters import ListFind, raster_layer  # noqa: E402

#: the metatiles of every case: (z, x0, y0); mixed zooms, over sea, coasts and inland
METAS = [(2, 0, 0), (3, 0, 0), (4, 8, 0), (4, 0, 8), (5, 16, 8), (5, 8, 16), (6, 32, 24),
         (6, 40, 16), (7, 64, 40), (7, 88, 40), (8, 136, 88), (8, 96, 120)]


@dataclass
class Case:
    name: str
    cog: str                    # key into the prepared COGs
    fmt: str                    # our layer's format
    colormap: str = ""
    rescale: str = ""           # our layer's rescale (catalog percentiles)

    @property
    def rio_format(self) -> str:
        return "JPEG" if self.fmt.startswith("jpeg") else "PNG"


CASES = [
    Case("relief-jpegcog-png", "relief_jpeg", "png"),
    Case("relief-deflate-png", "relief_deflate", "png"),
    Case("relief-jpegcog-jpeg", "relief_jpeg", "jpeg"),
    Case("sst-viridis-png", "sst", "png", "viridis", "p2,p98"),
    Case("sst16x-viridis-png", "sst_big", "png", "viridis", "p2,p98"),
]


# --- the COGs -------------------------------------------------------------------

def _write_cog(path: Path, array: np.ndarray, transform, nodata=None, compress="DEFLATE",
               blocksize=512) -> None:
    import rasterio
    count, height, width = array.shape
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", driver="COG", width=width, height=height, count=count,
                       dtype=array.dtype, crs="EPSG:4326", transform=transform, nodata=nodata,
                       compress=compress, blocksize=blocksize, resampling="nearest",
                       **({"quality": 85} if compress == "JPEG" else {})) as dst:
        dst.write(array)
    os.replace(tmp, path)


def _relief(data: Path) -> tuple[np.ndarray, bool]:
    import rasterio
    src = data / "raster" / "shadedrelief.jpg"
    if src.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(src) as s:
                return s.read(), True
    # stand-in: smooth synthetic hills on land, a flat sea
    h, w = 5400, 10800
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    hills = (np.sin(x / 97.0) * np.cos(y / 61.0) + np.sin((x + y) / 211.0)) * 60 + 150
    land = (np.sin(x / 900.0) + np.cos(y / 700.0)) > 0.3
    rgb = np.stack([np.where(land, hills, 160), np.where(land, hills * 0.9, 190),
                    np.where(land, hills * 0.7, 220)]).astype(np.uint8)
    return rgb, False


def _sst(data: Path) -> tuple[np.ndarray, float, bool]:
    import rasterio
    src = data / "raster" / "HadISST1_SST_update.nc"
    if src.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(f"netcdf:{src}:sst") as s:
                return s.read(1), float(s.nodata), True
    # stand-in: temperature falling off with latitude, land as nodata
    y, x = np.mgrid[0:180, 0:360].astype(np.float32)
    sst = 30 * np.cos(np.radians(y - 89.5)) - 2 + np.sin(x / 9.0)
    land = (np.sin(x / 23.0) + np.cos(y / 17.0)) > 0.8
    return np.where(land, -1e30, sst).astype(np.float32), -1e30, False


def prepare(cache: Path) -> tuple[dict[str, Path], bool]:
    """The COGs of every case (made once into ``cache``); True if from the real samples."""
    from rasterio.transform import from_origin
    cache.mkdir(parents=True, exist_ok=True)
    data = ROOT / "data"
    real = (data / "raster" / "shadedrelief.jpg").exists() and \
        (data / "raster" / "HadISST1_SST_update.nc").exists()
    tag = "" if real else "-standin"
    paths = {k: cache / f"{k}{tag}.tif" for k in ("relief_jpeg", "relief_deflate", "sst", "sst_big")}
    if not (paths["relief_jpeg"].exists() and paths["relief_deflate"].exists()):
        rgb, _ = _relief(data)
        t = from_origin(-180, 90, 360 / rgb.shape[2], 180 / rgb.shape[1])
        _write_cog(paths["relief_jpeg"], rgb, t, compress="JPEG")
        _write_cog(paths["relief_deflate"], rgb, t)
    if not (paths["sst"].exists() and paths["sst_big"].exists()):
        sst, nodata, _ = _sst(data)
        _write_cog(paths["sst"], sst[None], from_origin(-180, 90, 1, 1), nodata=nodata)
        k = 16
        big = _upsample(sst, nodata, k)
        _write_cog(paths["sst_big"], big[None], from_origin(-180, 90, 1 / k, 1 / k), nodata=nodata)
    return paths, real


def _upsample(a: np.ndarray, nodata: float, k: int) -> np.ndarray:
    """Bilinear k-fold upsampling of the valid values; nodata where the nearest pixel is nodata."""
    valid = a != nodata
    filled = np.where(valid, a, np.nan)
    h, w = a.shape
    ys = (np.arange(h * k) + 0.5) / k - 0.5
    xs = (np.arange(w * k) + 0.5) / k - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    y1 = np.clip(y0 + 1, 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    x1 = np.clip(x0 + 1, 0, w - 1)
    fy = np.clip(ys - y0, 0, 1)[:, None].astype(np.float32)
    fx = np.clip(xs - x0, 0, 1)[None, :].astype(np.float32)
    top = filled[y0][:, x0] * (1 - fx) + filled[y0][:, x1] * fx
    bot = filled[y1][:, x0] * (1 - fx) + filled[y1][:, x1] * fx
    out = top * (1 - fy) + bot * fy
    near = np.repeat(np.repeat(filled, k, 0), k, 1)
    out = np.where(np.isnan(out), near, out)
    return np.where(np.isnan(out), nodata, out).astype(np.float32)


# --- (a) rio-tiler --------------------------------------------------------------

def _tiles() -> list[Tile]:
    return [t for z, x, y in METAS for t in meta_tiles(Meta(z, x, y, min(8, 1 << z)))]


class RioSide:
    """rio-tiler, tile by tile: CPU seconds by phase and the bytes of each tile."""

    def __init__(self, path: str, case: Case, rescale: tuple[float, float] | None,
                 per_request: bool = True):
        from rio_tiler.colormap import cmap
        from rio_tiler.profiles import img_profiles

        self.path, self.case, self.rescale = path, case, rescale
        self.per_request = per_request
        self.cm = cmap.get(case.colormap) if case.colormap else None
        self.profile = img_profiles.get(case.rio_format.lower())
        self.cpu = self.read = self.style = self.encode = 0.0
        self.out: dict[Tile, bytes | None] = {}
        self.src = None

    def __enter__(self) -> "RioSide":
        if not self.per_request:
            from rio_tiler.io import Reader
            self.src = Reader(self.path)
            self.src.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.src is not None:
            self.src.__exit__(None, None, None)

    def tiles(self, tiles: list[Tile]) -> None:
        from rio_tiler.errors import TileOutsideBounds
        start = time.process_time()
        for t in tiles:
            t0 = time.process_time()
            try:
                if self.per_request:    # as a tile server does: open, read, close
                    from rio_tiler.io import Reader
                    with Reader(self.path) as src:
                        img = src.tile(t.x, t.y, t.z, resampling_method="nearest")
                else:
                    img = self.src.tile(t.x, t.y, t.z, resampling_method="nearest")
            except TileOutsideBounds:
                self.out[t] = None
                continue
            t1 = time.process_time()
            if self.rescale is not None:
                img.rescale(in_range=(self.rescale,))
            t2 = time.process_time()
            self.out[t] = img.render(img_format=self.case.rio_format, colormap=self.cm, **self.profile)
            t3 = time.process_time()
            self.read += t1 - t0
            self.style += t2 - t1
            self.encode += t3 - t2
        self.cpu += time.process_time() - start


def rio_tiles(path: str, case: Case, rescale: tuple[float, float] | None,
              tiles: list[Tile]) -> RioSide:
    warnings.simplefilter("ignore")
    with RioSide(path, case, rescale) as side:
        side.tiles(tiles)
    return side


def _rio_worker(args: tuple) -> float:
    path, case, rescale, tiles = args
    return rio_tiles(path, case, rescale, tiles).cpu


def rio_two_processes(path: str, case: Case, rescale, tiles: list[Tile]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of rendering ``tiles`` in 2 processes (half each)."""
    ctx = mp.get_context("spawn")
    halves = [tiles[0::2], tiles[1::2]]
    with ctx.Pool(2) as pool:
        pool.map(_rio_worker, [(path, case, rescale, tiles[:2])] * 2, chunksize=1)  # warm up
        t0 = time.perf_counter()
        cpus = pool.map(_rio_worker, [(path, case, rescale, h) for h in halves], chunksize=1)
        return time.perf_counter() - t0, sum(cpus)


# --- (b) the raster renderer ----------------------------------------------------

def layer_of(case: Case, name: str | None = None):
    return raster_layer(name=name or "r", format=case.fmt, colormap=case.colormap,
                        rescale=case.rescale, resampling="nearest")


class OurSide:
    """The raster renderer, metatile by metatile (a fresh encode memo per run)."""

    def __init__(self, ds, case: Case):
        from renderd.render.raster_renderer import RasterRenderer
        from renderd.render.tiles import EncodeMemo

        self.renderer = RasterRenderer(layer_of(case), find=ListFind([ds]), memo=EncodeMemo())
        self.cpu = self.wall = 0.0
        self.phases: dict[str, float] = {}
        self.tiles: dict[Tile, bytes] = {}
        self.encoded = self.count = 0

    def __enter__(self) -> "OurSide":
        self.renderer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.renderer.__exit__(None, None, None)

    def metatile(self, meta: Meta) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        res = self.renderer.render(meta)
        self.cpu += time.process_time() - c0
        self.wall += time.perf_counter() - t0
        self.encoded += res.encoded
        self.count += len(res.hashes)
        for k, v in res.phases.items():
            self.phases[k] = self.phases.get(k, 0.0) + v
        for i, t in enumerate(meta_tiles(meta)):
            self.tiles[t] = res.tile(i)


def metas() -> list[Meta]:
    return [Meta(z, x, y, min(8, 1 << z)) for z, x, y in METAS]


def measure(path: str, ds, case: Case, rescale) -> tuple[RioSide, RioSide, OurSide, float]:
    """(a), (a) with its Reader kept open, and (b) taking turns metatile by metatile, so the
    machine's load falls on all alike. Returns the three sides and the wall seconds of (a)."""
    a_wall = 0.0
    with RioSide(path, case, rescale) as a, RioSide(path, case, rescale, False) as a_open, \
            OurSide(ds, case) as b:
        for meta in metas():
            tiles = list(meta_tiles(meta))
            t0 = time.perf_counter()
            a.tiles(tiles)
            a_wall += time.perf_counter() - t0
            a_open.tiles(tiles)
            b.metatile(meta)
    return a, a_open, b, a_wall


# --- (c) the daemon ---------------------------------------------------------------

def layers_toml(cases: list[Case]) -> str:
    return "".join(f"""
[[layer]]
name = "{c.name}"
kind = "raster"
collection = "{c.name}"
format = "{c.fmt}"
colormap = "{c.colormap}"
rescale = "{c.rescale}"
resampling = "nearest"
maxzoom = 12
""" for c in cases)


def build_catalog(tmp: Path, cogs: dict[str, Path], cases: list[Case]) -> tuple[str, dict]:
    """A SQLite catalog filled by ``renderd-py ingest``, one collection per case; returns its
    URL and each case's record as the catalog holds it (statistics and percentiles included)."""
    from renderd.catalog import open_catalog

    url = f"sqlite://{tmp / 'catalog.sqlite'}"
    cfg = tmp / "ingest.toml"
    cfg.write_text(f'[catalog]\nurl = "{url}"\n' + layers_toml(cases))
    for c in cases:
        r = subprocess.run([sys.executable, "-m", "renderd.cli.main", "ingest", str(cogs[c.cog]),
                            "--collection", c.name, "-q", "-c", str(cfg)],
                           capture_output=True, text=True, cwd=str(ROOT))
        if r.returncode != 0:
            raise SystemExit(f"bench: ingest failed: {r.stderr.strip()}")
    with open_catalog(url, create=False) as cat:
        return url, {c.name: cat.list(c.name)[0] for c in cases}


def daemon_run(tmp: Path, catalog_url: str, records: dict, cases: list[Case],
               workers: int = 2) -> dict:
    """Every case's metatiles through ``renderd-py serve`` (``workers`` workers, disk store)."""
    from renderd.store import open_store
    from renderd import config as _config

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp / "daemon.toml"
    cfg.write_text(f"""
[daemon]
broker = "{endpoint}"
workers = {workers}
reserved = 0
queue_size = 100000
recent_seconds = 0.0
log_level = "warning"
[store]
kind = "disk"
path = "{tmp / 'store'}"
[catalog]
url = "{catalog_url}"
{layers_toml(cases)}
""")
    proc = start_daemon(cfg, endpoint, workers)
    out = {}
    try:
        with Client(endpoint) as c:
            pids = [w["pid"] for w in c.status()["worker_list"]]
            # warm up: one metatile outside the set per layer and worker, so imports and
            # opens are done, as the in-process run (b) has them done by its warm-up
            render_all(c, [(case.name, Meta(8, x, 248, 8)) for case in cases for x in (0, 248)])
            for case in cases:
                # (b) again right before, so that (c) / (b) compares runs minutes apart at most
                with OurSide(records[case.name], case) as near:
                    for meta in metas():
                        near.metatile(meta)
                before, broker_before = cpu_seconds(pids), cpu_seconds([proc.pid])
                work0 = c.status()["work"]
                t0 = time.perf_counter()
                failed = render_all(c, [(case.name, m) for m in metas()])
                wall = time.perf_counter() - t0
                work1 = c.status()["work"]
                out[case.name] = {"wall": wall, "cpu": cpu_seconds(pids) - before, "failed": failed,
                                  "broker_cpu": cpu_seconds([proc.pid]) - broker_before,
                                  **{k: work1.get(k, 0) - work0.get(k, 0)
                                     for k in ("encoded", "draw_seconds", "encode_seconds",
                                               "store_seconds", "job_seconds")},
                                  "b_wall": near.wall, "b_cpu": near.cpu, "b_tiles": near.tiles}
    finally:
        stop_daemon(proc)
    store = open_store(_config.load(cfg, check_files=False).store)
    try:
        for case in cases:
            stored = {}
            for z, x, y in METAS:
                meta = Meta(z, x, y, min(8, 1 << z))
                got = store.get_metatile(case.name, meta)
                if got is None:
                    continue
                idx, blobs = got
                for t in meta_tiles(meta):
                    digest = idx.tile_hash(t.x, t.y)
                    if digest is not None and digest in blobs:
                        stored[t] = blobs[digest]
            out[case.name]["tiles"] = stored
    finally:
        store.close()
    return out


# --- (d) the dynamic path through nginx ------------------------------------------------

def _middle(meta: Meta) -> Tile:
    return Tile(meta.z, meta.x0 + meta.n // 2, meta.y0 + meta.n // 2)


def _get(url: str) -> tuple[int, str, bytes]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, r.headers.get("X-Cache", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-Cache", ""), e.read()


def nginx_run(tmp: Path, catalog_url: str, records: dict, cogs: dict[str, Path],
              cases: list[Case], workers: int = 2) -> dict:
    """Cold tiles through ``renderd-py up`` (nginx + Lua, the daemon, the disk store, the
    catalog): for the middle tile of each metatile, never rendered before, the latency of one
    request, alternated with rio-tiler's time for the same tile (a Reader opened for it, as a
    tile server does) and (b)'s in-process time for its metatile."""
    d = tmp / "up"
    d.mkdir()
    port, metrics = free_port(), free_port()
    cfg = d / "up.toml"
    cfg.write_text(f"""
[daemon]
broker = "ipc://{d / 'broker.sock'}"
workers = {workers}
log_level = "warning"
[store]
kind = "disk"
path = "{d / 'cache'}"
[http]
listen = "127.0.0.1:{port}"
metrics = "127.0.0.1:{metrics}"
prefix = "{d / 'run'}"
[catalog]
url = "{catalog_url}"
{layers_toml(cases)}
""")
    proc = subprocess.Popen([sys.executable, "-m", "renderd.cli.main", "up", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=str(d), start_new_session=True)
    out: dict[str, dict] = {}
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith("http"):
            raise SystemExit(f"bench: renderd-py up did not start ({line!r})")
        base = line.rstrip("/")
        # warm up: a few metatiles outside the set per layer, so both workers have imported,
        # opened the catalog and the dataset (as (a) and (b) are warm)
        for case in cases:
            for x in (0, 8, 248, 240):
                _get(f"{base}/tiles/{case.name}/8/{x + 4}/252.{'jpg' if case.rio_format == 'JPEG' else 'png'}")
        for case in cases:
            ext = "jpg" if case.rio_format == "JPEG" else "png"
            ds = records[case.name]
            rescale = _rescale_of(case, ds)
            path = str(cogs[case.cog])
            ours, rio, inproc, statuses = [], [], [], []
            with RioSide(path, case, rescale) as a, OurSide(ds, case) as b:
                for meta in metas():
                    t = _middle(meta)
                    t0 = time.perf_counter()
                    status, cache, _ = _get(f"{base}/tiles/{case.name}/{t.z}/{t.x}/{t.y}.{ext}")
                    ours.append(time.perf_counter() - t0)
                    statuses.append(f"{status} {cache}")
                    t0 = time.perf_counter()
                    a.tiles([t])
                    rio.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    b.metatile(meta)
                    inproc.append(time.perf_counter() - t0)
            out[case.name] = {"ours": ours, "rio": rio, "inproc": inproc, "statuses": statuses}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def _rescale_of(case: Case, ds) -> tuple[float, float] | None:
    if not case.rescale:
        return None
    lo, hi = (float(v[1:]) for v in case.rescale.split(","))
    return ds.band_stats(1).percentile(lo), ds.band_stats(1).percentile(hi)


# --- comparing pixels ---------------------------------------------------------------

def rgba(data: bytes | None) -> np.ndarray:
    from PIL import Image
    if data is None:
        return np.zeros((256, 256, 4), dtype=np.uint8)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def agreement(a: list[bytes | None], b: list[bytes]) -> tuple[float, float]:
    """Share of identical pixels (both transparent counts as identical), and of tiles."""
    same = total = tiles = 0
    for x, y in zip(a, b):
        pa, pb = rgba(x), rgba(y)
        eq = (pa == pb).all(axis=2) | ((pa[:, :, 3] == 0) & (pb[:, :, 3] == 0))
        same += int(eq.sum())
        total += eq.size
        tiles += bool(eq.all())
    return same / total, tiles / len(a)


# --- main -------------------------------------------------------------------------

@dataclass
class Row:
    case: str
    tiles: int
    a_rate: float
    a_cpu: float
    b_rate: float
    b_cpu: float
    ratio: float
    pixels: float
    tiles_same: float
    encoded: int
    a2_rate: float = 0.0
    a2_cpu: float = 0.0
    c_rate: float = 0.0
    c_cpu: float = 0.0
    c_ratio: float = 0.0
    c_per_worker: float = 0.0
    c_identical: float = 0.0
    extra: dict = field(default_factory=dict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--no-daemon", action="store_true", help="skip (c)")
    ap.add_argument("--no-nginx", action="store_true", help="skip (d), cold tiles through nginx")
    ap.add_argument("--no-two", action="store_true", help="skip (a) with 2 processes")
    ap.add_argument("--workers", type=int, default=2, help="workers of (c) (default 2)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "renderd-bench-raster"),
                    help="where the COGs are made and kept")
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cases = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    cogs, real = prepare(Path(args.cache))
    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-raster-"))
    catalog_url, records = build_catalog(tmp, cogs, cases)
    tiles = _tiles()
    print(f"{len(tiles)} tiles in {len(METAS)} metatiles per case, zooms "
          f"{sorted({z for z, _, _ in METAS})}; COGs from "
          f"{'data/raster (the real samples)' if real else 'SYNTHETIC STAND-INS (no data/raster)'}; "
          f"nearest resampling; CPU time per tile")
    rows = []
    for case in cases:
        ds = records[case.name]
        rescale = _rescale_of(case, ds)
        path = str(cogs[case.cog])
        measure(path, ds, case, rescale)       # warm the page cache and imports
        a, a_open, b, a_wall = measure(path, ds, case, rescale)
        ours_list = [b.tiles[t] for t in tiles]
        a_list = [a.out[t] for t in tiles]
        pix, same_tiles = agreement(a_list, ours_list)
        n = len(tiles)
        row = Row(case.name, n, n / a_wall, a.cpu / n * 1000, n / b.wall, b.cpu / n * 1000,
                  a.cpu / b.cpu, pix, same_tiles, b.encoded)
        row.extra = {"a_ms": {"read": a.read / n * 1000, "style": a.style / n * 1000,
                              "encode": a.encode / n * 1000},
                     "b_ms": {k: v / n * 1000 for k, v in b.phases.items()},
                     "a_bytes": sum(len(x or b"") for x in a_list) / n,
                     "b_bytes": sum(len(x) for x in ours_list) / n,
                     "empty": sum(1 for x in a_list if x is None),
                     "a_open_cpu": a_open.cpu / n * 1000, "ratio_open": a_open.cpu / b.cpu}
        if not args.no_two:
            w2, c2 = rio_two_processes(path, case, rescale, tiles)
            row.a2_rate, row.a2_cpu = n / w2, c2 / n * 1000
        rows.append(row)
        print(f"  {case.name}: (a) {row.a_cpu:.2f} ms/tile, (b) {row.b_cpu:.2f} ms/tile, "
              f"{row.ratio:.1f}x, pixels {pix * 100:.3f}% identical", flush=True)

    got, cold = {}, {}
    try:
        if not args.no_daemon:
            got = daemon_run(tmp, catalog_url, records, cases, args.workers)
        if not args.no_nginx:
            cold = nginx_run(tmp, catalog_url, records, cogs, cases, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if got:
        for row, case in zip(rows, cases):
            c = got[case.name]
            row.c_rate = row.tiles / c["wall"]
            row.c_cpu = c["cpu"] / row.tiles * 1000
            row.c_ratio = row.c_rate / row.a2_rate if row.a2_rate else 0.0
            row.c_per_worker = row.c_rate / args.workers / (row.tiles / c["b_wall"])
            row.extra["c_cpu_vs_b"] = c["b_cpu"] / c["cpu"]
            ref = c["b_tiles"]
            row.c_identical = sum(c["tiles"].get(t) == ref[t] for t in tiles) / len(tiles)
            row.extra["c_failed"] = c["failed"]
            row.extra["c_broker_ms"] = c["broker_cpu"] / row.tiles * 1000
            row.extra["c_ms"] = {k.split("_")[0]: c[k] / row.tiles * 1000
                                 for k in ("draw_seconds", "encode_seconds", "store_seconds",
                                           "job_seconds")}
    report(rows, real)
    if cold:
        report_cold(cold)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))


def report_cold(cold: dict) -> None:
    import statistics
    med = statistics.median
    print("\n(d) cold tiles through nginx, one request per metatile never rendered "
          "(the middle tile), wall ms:")
    print("| case | (d) latency median | (d) max | rio-tiler one tile (Reader opened) median "
          "| (d) / rio-tiler | (b) its metatile in-process median | (d) - (b) median | answers |")
    print("|---|---|---|---|---|---|---|---|")
    for name, c in cold.items():
        ours, rio, inproc = ([v * 1000 for v in c[k]] for k in ("ours", "rio", "inproc"))
        over = [o - i for o, i in zip(ours, inproc)]
        answers = sorted(set(c["statuses"]))
        print(f"| {name} | {med(ours):.1f} | {max(ours):.1f} | {med(rio):.1f} | "
              f"{med(ours) / med(rio):.2f} | {med(inproc):.1f} | {med(over):.1f} | "
              f"{', '.join(answers)} |")


def report(rows: list[Row], real: bool) -> None:
    print()
    print("| case | (a) tiles/s | (a) CPU ms/tile | (a') reader kept open, CPU ms/tile "
          "| (b) tiles/s | (b) CPU ms/tile | (b)/(a) CPU | (b)/(a') CPU "
          "| pixels identical to (a) | tiles identical | encodes (saved) | bytes/tile (a) / (b) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.case} | {r.a_rate:.0f} | {r.a_cpu:.2f} | {r.extra['a_open_cpu']:.2f} | "
              f"{r.b_rate:.0f} | {r.b_cpu:.2f} | {r.ratio:.1f}x | {r.extra['ratio_open']:.1f}x | "
              f"{r.pixels * 100:.3f}% | {r.tiles_same * 100:.1f}% | "
              f"{r.encoded} ({r.tiles - r.encoded}) | {r.extra['a_bytes']:.0f} / {r.extra['b_bytes']:.0f} |")
    for label, key in (("(a)", None), ("(a')", "ratio_open")):
        ratios = [r.ratio if key is None else r.extra[key] for r in rows]
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(f"\ngeometric mean (b)/{label} CPU: {gm:.1f}x; lowest {min(ratios):.1f}x", end="")
    print()
    print("\nwhere the time goes, CPU ms per tile:")
    for r in rows:
        a, b = r.extra["a_ms"], r.extra["b_ms"]
        print(f"  {r.case}: (a) read {a['read']:.2f}, rescale {a['style']:.2f}, "
              f"render/encode {a['encode']:.2f} | (b) " +
              ", ".join(f"{k} {v:.2f}" for k, v in b.items()) + " (wall, summed per phase)")
    if any(r.c_rate for r in rows):
        print("\n| case | (a) 2 processes tiles/s | (a) 2p CPU ms/tile | (c) serve tiles/s "
              "| (c) workers CPU ms/tile | (c)/(a, 2p) | (c) per worker / (b) tiles/s "
              "| (b) / (c) CPU per tile | (c) tiles = (b) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r.case} | {r.a2_rate:.0f} | {r.a2_cpu:.2f} | {r.c_rate:.0f} | {r.c_cpu:.2f} | "
                  f"{r.c_ratio:.1f}x | {r.c_per_worker:.2f} | {r.extra['c_cpu_vs_b']:.2f} | "
                  f"{r.c_identical * 100:.0f}% |")
        print("((b) here is run again right before each case's (c), the daemon idle meanwhile)")
        print("\n(c) in the workers, wall ms per tile (as they report to the broker):")
        for r in rows:
            cm = r.extra.get("c_ms", {})
            print(f"  {r.case}: " + ", ".join(f"{k} {v:.2f}" for k, v in cm.items())
                  + f"; (b) draw {r.extra['b_ms'].get('read', 0) + r.extra['b_ms'].get('warp', 0):.2f}"
                  + f"; the broker's CPU {r.extra.get('c_broker_ms', 0):.2f}"
                  + (f"; {r.extra['c_failed']} metatiles FAILED" if r.extra.get("c_failed") else ""))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\n(bench process peak RSS {usage.ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
