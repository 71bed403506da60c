#!/usr/bin/env python3
"""Lower zooms from the next zoom's tiles (2x2 -> 1) against renders from the
sources: time per metatile and pixel difference, per layer and zoom.

    .venv/bin/python bench/pyramid.py [--top 6] [--layers bluemarble,relief,sst] [--keep DIR]

The demo's raster layers (config/demo.toml) over the sample rasters, made
into COGs as scripts/prepare-rasters makes them and ingested into a catalog
of their own. For each layer the top zoom is rendered from the sources and
stored; then each zoom below is (a) rendered from the sources, (b) built
from the zoom above as stored (the top zoom's source render, then each
built zoom in turn: the chain a pyramid built this way would be), both in
this one process, one metatile after another, each with an encode memo of
its own. Printed per zoom: metatiles, milliseconds per metatile of each and
their ratio, and how (b)'s tiles differ from (a)'s, decoded to RGBA:

- ``mean``: mean absolute difference per channel (0-255), over every pixel;
- ``p99``: the 99th percentile of a pixel's largest channel difference;
- ``>16``: the share of pixels whose largest channel difference is over 16;
- ``psnr``: peak signal-to-noise ratio in dB over RGB (premultiplied by alpha);
- ``bytes``: (b)'s encoded bytes over (a)'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_HERE = str(Path(__file__).resolve().parent)     # (bench/http.py would hide the standard library's)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from renderd import config as _config  # noqa: E402
from renderd.render import open_renderer  # noqa: E402
from renderd.render.pyramid import decode, from_children  # noqa: E402
from renderd.render.tiles import EncodeMemo  # noqa: E402
from renderd.store.disk import DiskStore  # noqa: E402
from renderd.store.index import MetaIndex  # noqa: E402
from renderd.tilemath import Meta, metatile_size  # noqa: E402

RENDERD = [sys.executable, "-m", "renderd.cli.main"]
DATA = ROOT / "data" / "raster"
WORLD = ["--bounds", "-180,-90,180,90", "--crs", "EPSG:4326"]
SST = f"netcdf:{DATA / 'HadISST1_SST_update.nc'}:sst"


EXTRA_LAYERS = """
[[layer]]
name = "bluemarble_avg"
kind = "raster"
collection = "bluemarble"
format = "jpeg85"
resampling = "average"
maxzoom = 7

[[layer]]
name = "pieces"
kind = "raster"
collection = "pieces"
format = "jpeg85"
maxzoom = 7

[[layer]]
name = "pieces_avg"
kind = "raster"
collection = "pieces"
format = "jpeg85"
resampling = "average"
maxzoom = 7
"""


def cut(cog: Path, out: Path, cols: int = 8, rows: int = 4) -> None:
    """The world COG ``cog`` in ``cols`` x ``rows`` GeoTIFF pieces (a mosaic of many files)."""
    import rasterio
    from rasterio.windows import Window, transform as window_transform
    out.mkdir(parents=True, exist_ok=True)
    with rasterio.open(cog) as src:
        w, h = src.width // cols, src.height // rows
        for r in range(rows):
            for c in range(cols):
                path = out / f"piece_{r}{c}.tif"
                if path.exists():
                    continue
                win = Window(c * w, r * h, w, h)
                prof = dict(driver="GTiff", width=w, height=h, count=src.count, dtype=src.dtypes[0],
                            crs=src.crs, transform=window_transform(win, src.transform), compress="deflate")
                with rasterio.open(path, "w", **prof) as dst:
                    dst.write(src.read(window=win))


def prepare(tmp: Path) -> Path:
    """COGs as scripts/prepare-rasters makes them, ingested; the configuration."""
    cogs = tmp / "rasters"
    steps = [([str(DATA / "bmng.jpg"), *WORLD, "--compression", "jpeg"], "bluemarble", "bmng.tif"),
             ([str(DATA / "shadedrelief.jpg"), *WORLD, "--compression", "deflate"], "relief", "shadedrelief.tif"),
             ([SST, "--band", "1", "--crs", "EPSG:4326", "--name", "sst_2012-08.tif"], "sst", "sst_{month}.tif")]
    text = (ROOT / "config" / "demo.toml").read_text()
    part = text[text.index("[catalog]"):].replace('url = "sqlite://../var/catalog.sqlite"',
                                                  f'url = "sqlite://{tmp / "catalog.sqlite"}"')
    cfg = tmp / "renderd.toml"
    cfg.write_text(f'[store]\nkind = "disk"\npath = "{tmp / "cache"}"\n' + part + EXTRA_LAYERS)
    for args, collection, pattern in steps:
        subprocess.run(RENDERD + ["optimize-rasters", "-q", "-o", str(cogs), *args], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        subprocess.run(RENDERD + ["ingest", "-q", "-c", str(cfg), str(cogs / pattern), "--collection",
                                  collection, "--skip-existing"], check=True, cwd=ROOT)
    # the mosaic: Blue Marble in 32 pieces of 45 x 45 degrees, each a JPEG COG
    cut(cogs / "bmng.tif", tmp / "pieces")
    subprocess.run(RENDERD + ["optimize-rasters", "-q", "-o", str(cogs / "pieces"), "--compression", "jpeg",
                              "--jobs", "2", *sorted(str(p) for p in (tmp / "pieces").glob("*.tif"))],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    subprocess.run(RENDERD + ["ingest", "-q", "-c", str(cfg), str(cogs / "pieces" / "piece_{}.tif"),
                              "--collection", "pieces", "--skip-existing"], check=True, cwd=ROOT)
    return cfg


def world_metas(z: int, meta: int = 8) -> list[Meta]:
    n = metatile_size(z, meta)
    side = (1 << z) // n
    return [Meta(z, mx * n, my * n, n) for my in range(side) for mx in range(side)]


def compare(a: bytes, b: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the largest channel difference, and the RGB difference
    premultiplied by alpha (for PSNR)."""
    pa, pb = decode(a).astype(np.float64), decode(b).astype(np.float64)
    both_clear = (pa[..., 3] == 0) & (pb[..., 3] == 0)
    diff = np.abs(pa - pb)
    diff[both_clear] = 0
    pre_a = pa[..., :3] * pa[..., 3:4] / 255.0
    pre_b = pb[..., :3] * pb[..., 3:4] / 255.0
    return diff.max(axis=2), (pre_a - pre_b)


class Diff:
    """How tiles built from tiles differ from the same tiles rendered from the sources."""

    def __init__(self) -> None:
        self.maxd: list[np.ndarray] = []
        self.sq = self.abs_sum = 0.0
        self.pixels = self.over16 = 0

    def add(self, a: bytes, b: bytes) -> None:
        md, pre = compare(a, b)
        self.maxd.append(md.ravel())
        self.sq += float((pre ** 2).sum())
        self.abs_sum += float(md.sum())
        self.over16 += int((md > 16).sum())
        self.pixels += md.size

    def row(self) -> dict:
        if not self.pixels:
            return {"mean": None, "p99": None, "over16": None, "psnr": None}
        mse = self.sq / (self.pixels * 3)
        return {"mean": round(self.abs_sum / self.pixels, 2),
                "p99": int(np.percentile(np.concatenate(self.maxd), 99)),
                "over16": round(100.0 * self.over16 / self.pixels, 2),
                "psnr": round(10 * np.log10(255 ** 2 / mse), 1) if mse > 0 else float("inf")}


def bench_layer(cfg, tileset: str, top: int, tmp: Path) -> tuple[list[dict], dict]:
    """The chain (every zoom below the top from tiles), and the schedule of
    ``lower_zooms: auto`` (``from_tiles``)."""
    from renderd.render.pyramid import from_tiles
    base = tileset.split("/")[0]
    lyr = cfg.layer(base)
    keys = dict(zip(lyr.keys, tileset.split("/")[1:])) or None
    chain = DiskStore(str(tmp / f"chain-{tileset.replace('/', '_')}"))
    auto = DiskStore(str(tmp / f"auto-{tileset.replace('/', '_')}"))
    rows = []
    summary = {"tileset": tileset, "resampling": lyr.resampling, "source_s": 0.0, "auto_s": 0.0,
               "tiles_zooms": [z for z in range(top) if from_tiles(lyr, z, top)]}
    auto_diff = Diff()

    def put(store, m, res) -> None:
        store.put_metatile(tileset, MetaIndex(m, res.hashes, int(time.time()), 0, lyr.ext), res.blobs)

    with open_renderer(lyr, cfg.catalog.url) as r:
        r.memo = EncodeMemo()
        for m in world_metas(top, lyr.metatile):
            res = r.render(m, keys)
            put(chain, m, res)
            put(auto, m, res)
        memo_chain, memo_auto = EncodeMemo(), EncodeMemo()
        for z in range(top - 1, -1, -1):
            metas = world_metas(z, lyr.metatile)
            src_s = down_s = 0.0
            d = Diff()
            bytes_src = bytes_down = 0
            tiles_here = from_tiles(lyr, z, top)
            for m in metas:
                t = time.perf_counter()
                a = r.render(m, keys)
                src_s += time.perf_counter() - t
                t = time.perf_counter()
                b = from_children(chain, tileset, m, lyr, memo=memo_chain)
                down_s += time.perf_counter() - t
                assert b is not None
                put(chain, m, b)
                bytes_src += sum(len(a.blobs[h]) for h in a.hashes)
                bytes_down += sum(len(b.blobs[h]) for h in b.hashes)
                for i in range(m.n * m.n):
                    d.add(a.tile(i), b.tile(i))
                if tiles_here:
                    t = time.perf_counter()
                    c = from_children(auto, tileset, m, lyr, memo=memo_auto)
                    summary["auto_s"] += time.perf_counter() - t
                    put(auto, m, c)
                    for i in range(m.n * m.n):
                        auto_diff.add(a.tile(i), c.tile(i))
                else:
                    put(auto, m, a)
            summary["source_s"] += src_s
            if not tiles_here:
                summary["auto_s"] += src_s
            rows.append({"tileset": tileset, "zoom": z, "metatiles": len(metas),
                         "source_ms": round(src_s * 1000 / len(metas), 1),
                         "tiles_ms": round(down_s * 1000 / len(metas), 1),
                         "speedup": round(src_s / down_s, 2) if down_s else None,
                         **d.row(), "bytes": round(bytes_down / bytes_src, 2)})
    summary.update(auto_diff.row())
    summary["source_s"] = round(summary["source_s"], 2)
    summary["auto_s"] = round(summary["auto_s"], 2)
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top", type=int, default=6, help="the zoom rendered from the sources (default 6)")
    ap.add_argument("--layers", default="bluemarble,relief,sst/2012-08,bluemarble_avg,pieces,pieces_avg")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (COGs and catalog kept for a next run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-pyramid-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = _config.load(prepare(tmp))
    rows, autos = [], []
    for ts in args.layers.split(","):
        got, summary = bench_layer(cfg, ts, args.top, tmp)
        rows += got
        autos.append(summary)
    if args.json:
        print(json.dumps({"chain": rows, "auto": autos}))
        return
    print(f"every zoom below {args.top} from the next zoom's tiles, against a render from the sources:")
    print(f"{'tile set':<14}{'z':>3}{'metas':>7}{'source ms':>11}{'tiles ms':>10}{'ratio':>7}"
          f"{'mean':>7}{'p99':>5}{'>16 %':>7}{'psnr':>7}{'bytes':>7}")
    for r in rows:
        print(f"{r['tileset']:<14}{r['zoom']:>3}{r['metatiles']:>7}{r['source_ms']:>11}{r['tiles_ms']:>10}"
              f"{r['speedup']:>7}{r['mean']:>7}{r['p99']:>5}{r['over16']:>7}{r['psnr']:>7}{r['bytes']:>7}")
    print(f"\nlower_zooms auto: zooms 0-{args.top - 1} (seconds in one process), and how the zooms it "
          "builds from tiles differ:")
    print(f"{'tile set':<14}{'resampling':>11}{'from tiles':>12}{'sources s':>11}{'auto s':>8}"
          f"{'mean':>7}{'p99':>5}{'>16 %':>7}{'psnr':>7}")
    for a in autos:
        zooms = ",".join(str(z) for z in a["tiles_zooms"]) or "-"
        print(f"{a['tileset']:<14}{a['resampling']:>11}{zooms:>12}{a['source_s']:>11}{a['auto_s']:>8}"
              f"{a['mean'] if a['mean'] is not None else '-':>7}{a['p99'] if a['p99'] is not None else '-':>5}"
              f"{a['over16'] if a['over16'] is not None else '-':>7}{a['psnr'] if a['psnr'] is not None else '-':>7}")


if __name__ == "__main__":
    main()
