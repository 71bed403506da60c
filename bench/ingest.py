"""Ingest of large rasters: wall time, CPU time and peak memory.

Writes rasters of a few hundred MB at run time (float32 with nodata, and
uint8 RGB; tiled GeoTIFFs, uncompressed and DEFLATE), then runs
``renderd-py ingest`` on each in a process of its own, with and without
statistics, and prints seconds, seconds per megapixel and the process's
peak resident memory (its ``ru_maxrss``). Not a timed test::

    .venv/bin/python bench/ingest.py [--size 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.catalog import write_raster  # noqa: E402


def make(path: Path, kind: str, size: int, compress: str | None) -> None:
    """Written in strips of rows, so this process stays small too."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    bands, dtype = (1, "float32") if kind == "float32" else (3, "uint8")
    extra = {"compress": compress} if compress else {}
    write_raster(path, np.zeros((bands, 1, 1), dtype), nodata=-9999.0 if bands == 1 else None,
                 block=None)  # a header only, rewritten below at full size
    prof = dict(driver="GTiff", width=size, height=size, count=bands, dtype=dtype, crs="EPSG:32633",
                transform=from_origin(400000, 5600000, 10, 10), tiled=True, blockxsize=512,
                blockysize=512, **extra)
    if bands == 1:
        prof["nodata"] = -9999.0
    rng = np.random.default_rng(1)
    with rasterio.open(path, "w", **prof) as dst:
        for r in range(0, size, 512):
            h = min(512, size - r)
            if bands == 1:
                rows = rng.normal(300.0, 20.0, (1, h, size)).astype(np.float32)
                rows[:, :, : size // 5] = -9999.0      # a nodata margin
            else:
                rows = rng.integers(0, 256, (3, h, size), dtype=np.uint8)
            dst.write(rows, window=Window(0, r, size, h))


def ingest(tmp: Path, path: Path, stats: bool) -> tuple[float, float, int]:
    cfg = tmp / "renderd.toml"
    cfg.write_text(f'[store]\npath = "{tmp / "cache"}"\n[catalog]\nurl = "sqlite://{tmp / "c.sqlite"}"\n'
                   '[http]\npurge_url = "off"\n')
    (tmp / "c.sqlite").unlink(missing_ok=True)
    argv = [sys.executable, "-c", "import sys; from renderd.cli.main import main; sys.exit(main())",
            "-c", str(cfg), "ingest", str(path), "--collection", "bench", "-q"]
    if not stats:
        argv.append("--no-stats")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)   # this child's own figures
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"ingest exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10000, help="pixels along a side")
    ap.add_argument("--keep", default=None, help="write the rasters here and keep them")
    ap.add_argument("--only", default=None, help="one raster: float32_raw, float32_deflate or rgb_raw")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench-ingest-"))
    tmp.mkdir(parents=True, exist_ok=True)
    mpx = args.size * args.size / 1e6
    print(f"{args.size} x {args.size} pixels ({mpx:.0f} Mpx), 512 px tiles, one process, 2-core machine")
    print(f"{'raster':32} {'MB':>6} {'stats':>6} {'wall s':>7} {'cpu s':>7} {'s/Mpx':>7} {'peak MB':>8}")
    try:
        for kind, compress in (("float32", None), ("float32", "deflate"), ("rgb", None)):
            path = tmp / f"{kind}_{compress or 'raw'}.tif"
            if args.only and path.stem != args.only:
                continue
            if not path.exists():
                make(path, kind, args.size, compress)
            mb = os.path.getsize(path) / 1e6
            for stats in (True, False):
                wall, cpu, peak = ingest(tmp, path, stats)
                print(f"{path.name:32} {mb:6.0f} {'yes' if stats else 'no':>6} {wall:7.2f} {cpu:7.2f} "
                      f"{wall / mpx:7.4f} {peak / 1024:8.0f}")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
