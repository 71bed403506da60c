#!/usr/bin/env python3
"""The sample rasters from raw files to a seeded layer and PMTiles files:
(a) the separate commands one after another, (b) one pipeline.

    .venv/bin/python bench/pipeline.py [--rasters 3,6,12] [--zoom 0-6] [--jobs 1] [--workers 2]
                                       [--repeat R] [--keep DIR]

The three sample JPEGs (data/raster: Blue Marble, shaded relief, ETOPO1;
without a georeference, the whole world in EPSG:4326) are one raster layer
with a key, ``name``, one tile set each: ``--rasters 6`` adds copies under
other names (``bmng_2.jpg``...), so that the same work is done N/3 times.
Both sides do the same work with the same options: JPEG COGs
(``optimize-rasters --compression jpeg --jobs J``, ``transform.optimize``
with ``jobs: J``), ingest with statistics, a seed of every tile set over
the zoom range at the bulk priority through the daemon (``renderd-py
serve``, ``--workers`` of them (default 2), started afresh with an empty
store and catalog for each run and not timed), one PMTiles file per tile
set; the two sides' PMTiles files must hold the same tiles.

(a) runs ``optimize-rasters``, ``ingest``, then ``seed`` and ``export`` for
each tile set. (b) runs ``pipeline run`` on

    read.files -> transform.optimize -> write.catalog -> transform.pyramid -> write.pmtiles

Printed per run: wall time and peak memory; per number of rasters the
median wall time of each side and their ratio (a)/(b). Peak memory is the
largest sum of the resident memory of the commands' (or the pipeline's)
process and its children (COG conversions), sampled every 50 ms; the
daemon's is left out (the same for both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_HERE = str(Path(__file__).resolve().parent)     # (bench/http.py would hide the standard library's)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RENDERD = [sys.executable, "-m", "renderd.cli.main"]
SAMPLES = ("bmng", "shadedrelief", "etopo1")
PAGE = os.sysconf("SC_PAGE_SIZE")

CONFIG = """
[daemon]
broker = "ipc://{dir}/broker.sock"
workers = {workers}
[store]
kind = "disk"
path = "{dir}/cache"
[http]
purge_url = "off"
[catalog]
url = "sqlite://{dir}/catalog.sqlite"
[[layer]]
name = "sample"
kind = "raster"
collection = "sample"
keys = ["name"]
format = "jpeg85"
maxzoom = 8
"""


class Sampler(threading.Thread):
    """The peak of the summed resident memory of a process and its descendants."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0
        self.done = threading.Event()

    def tree_rss(self) -> int:
        parents: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, todo = set(), [self.pid]
        while todo:
            p = todo.pop()
            tree.add(p)
            todo.extend(c for c, pp in parents.items() if pp == p and c not in tree)
        total = 0
        for p in tree:
            try:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                pass
        return total

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.tree_rss())
            self.done.wait(self.every)


def run(cmd: list[str], cwd: Path) -> int:
    """Run a command; its peak tree memory (bytes)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    s = Sampler(proc.pid)
    s.start()
    _, err = proc.communicate()
    s.done.set()
    s.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}): {err[-2000:]}")
    return s.peak


class Daemon:
    def __init__(self, dir: Path, workers: int = 2):
        self.dir = dir
        self.workers = workers
        self.config = dir / "renderd.toml"
        self.config.write_text(CONFIG.format(dir=dir, workers=workers))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Daemon":
        from renderd.client import Client
        self.proc = subprocess.Popen(RENDERD + ["serve", "-c", str(self.config)], cwd=self.dir,
                                     stdout=open(self.dir / "serve.log", "w"), stderr=subprocess.STDOUT)
        with Client(f"ipc://{self.dir}/broker.sock", timeout=2) as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if c.ping(0.5) and c.status(1.0)["workers"]["total"] >= self.workers:
                        return self
                except Exception:
                    pass
                time.sleep(0.1)
        raise SystemExit("renderd-py serve did not come up")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def sources(dir: Path, n: int) -> list[str]:
    """``n`` raw rasters in ``dir/raw``: the samples, then copies under other names."""
    raw = dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        base = SAMPLES[i % len(SAMPLES)]
        name = base if i < len(SAMPLES) else f"{base}_{i // len(SAMPLES) + 1}"
        shutil.copyfile(ROOT / "data" / "raster" / f"{base}.jpg", raw / f"{name}.jpg")
        names.append(name)
    return names


def commands(dir: Path, names: list[str], zoom: str, jobs: int) -> tuple[float, int]:
    """(a): the commands one after another; (seconds, peak memory)."""
    cfg = str(dir / "renderd.toml")
    world = ["--bbox", "-180,-85.05,180,85.05"]
    steps = [RENDERD + ["optimize-rasters", "-q", "-o", str(dir / "cogs"), "--compression", "jpeg",
                        "--bounds", "-180,-90,180,90", "--crs", "EPSG:4326", "--jobs", str(jobs),
                        *(str(dir / "raw" / f"{n}.jpg") for n in names)],
             RENDERD + ["ingest", "-q", "-c", cfg, str(dir / "cogs" / "{name}.tif"), "--collection", "sample"]]
    (dir / "out").mkdir()
    for n in names:
        steps.append(RENDERD + ["seed", "-q", "-c", cfg, "--layer", "sample", "--key", f"name={n}",
                                "--zoom", zoom, *world])
    for n in names:
        steps.append(RENDERD + ["export", "-q", "-c", cfg, "--layer", "sample", "--key", f"name={n}",
                                "--zoom", zoom, *world, "-o", str(dir / "out" / f"{n}.pmtiles")])
    t0 = time.monotonic()
    peak = max(run(cmd, dir) for cmd in steps)
    return time.monotonic() - t0, peak


def pipeline(dir: Path, names: list[str], zoom: str, jobs: int) -> tuple[float, int, dict]:
    """(b): one pipeline; (seconds, peak memory, its --json summary)."""
    p = dir / "p.json"
    p.write_text(json.dumps([
        {"type": "read.files", "pattern": "raw/{name}.jpg"},
        {"type": "transform.optimize", "output": "cogs", "compression": "jpeg",
         "bounds": [-180, -90, 180, 90], "crs": "EPSG:4326", "jobs": jobs},
        {"type": "write.catalog", "collection": "sample"},
        {"type": "transform.pyramid", "layer": "sample", "zoom": zoom, "bbox": "-180,-85.05,180,85.05"},
        {"type": "write.pmtiles", "path": "out/{name}.pmtiles"},
    ]))
    out = dir / "summary.json"
    cmd = RENDERD + ["pipeline", "run", "-q", "--json", "-c", str(dir / "renderd.toml"), str(p)]
    t0 = time.monotonic()
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, cwd=dir, stdout=f, stderr=subprocess.PIPE, text=True)
        s = Sampler(proc.pid)
        s.start()
        _, err = proc.communicate()
        s.done.set()
        s.join()
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline run failed ({proc.returncode}): {err[-2000:]}")
    return seconds, s.peak, json.loads(out.read_text())


def fresh(base: Path, name: str) -> Path:
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def check_same(a: Path, b: Path, names: list[str]) -> None:
    """Both sides wrote the same tiles."""
    from pmtiles.reader import MmapSource, all_tiles
    for n in names:
        with open(a / "out" / f"{n}.pmtiles", "rb") as fa, open(b / "out" / f"{n}.pmtiles", "rb") as fb:
            ta, tb = dict(all_tiles(MmapSource(fa))), dict(all_tiles(MmapSource(fb)))
        if ta != tb:
            raise SystemExit(f"{n}: the two sides' extracts differ ({len(ta)} and {len(tb)} tiles)")


def one(base: Path, n: int, side: str, args) -> tuple[float, int, str, list[str]]:
    d = fresh(base, f"{n}-{side}")
    names = sources(d, n)
    with Daemon(d, args.workers):
        if side == "a":
            seconds, peak = commands(d, names, args.zoom, args.jobs)
            note = f"{2 + 2 * n} commands"
        else:
            seconds, peak, doc = pipeline(d, names, args.zoom, args.jobs)
            st = doc["stages"]
            note = (f"{st[3]['rendered']} metatiles rendered; first at {st[3]['first']:.1f} s, "
                    f"last COG at {st[1]['last']:.1f} s")
    return seconds, peak, note, names


def main() -> None:
    import statistics
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rasters", default="3,6,12", help="numbers of rasters, comma-separated (default 3,6,12)")
    ap.add_argument("--zoom", default="0-6")
    ap.add_argument("--jobs", type=int, default=1, help="COGs converted at once, both sides (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="the daemon's render workers (default 2)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each side per number of rasters, taking turns (default 1)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and leave it there")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    print(f"{os.cpu_count()} cores, {args.workers} render workers, zooms {args.zoom}, jobs {args.jobs}, "
          f"{args.repeat} runs of each side")
    print(f"{'rasters':>7}  {'side':<14}{'wall s':>8}{'peak MB':>9}  notes")
    for n in (int(v) for v in args.rasters.split(",")):
        times: dict[str, list[float]] = {"a": [], "b": []}
        peaks: dict[str, int] = {"a": 0, "b": 0}
        for r in range(args.repeat):
            for side in (("a", "b") if r % 2 == 0 else ("b", "a")):
                seconds, peak, note, names = one(base, n, side, args)
                times[side].append(seconds)
                peaks[side] = max(peaks[side], peak)
                label = "(a) commands" if side == "a" else "(b) pipeline"
                print(f"{n:>7}  {label:<14}{seconds:>8.1f}{peak / 1e6:>9.0f}  {note}", flush=True)
            check_same(base / f"{n}-a", base / f"{n}-b", names)
        ratios = [a / b for a, b in zip(times["a"], times["b"])]
        ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
        spread = f" (runs {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        print(f"{n:>7}  {'median':<14}  (a) {ma:.1f} s, (b) {mb:.1f} s, (a)/(b) {ma / mb:.2f}{spread}; "
              f"peak (a) {peaks['a'] / 1e6:.0f} MB, (b) {peaks['b'] / 1e6:.0f} MB", flush=True)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
