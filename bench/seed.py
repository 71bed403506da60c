#!/usr/bin/env python3
"""Seeding throughput and storage, in one run.

Seeds the Helsinki extract (OSM style, throwaway PostGIS) at zooms 10-16
and the world style at zooms 0-7 with ``renderd-py seed`` through the
daemon, and renders the same metatiles with 2 plain Mapnik processes (the
in-process limit of bench/render.py). Prints metatiles/s for each and the
ratio. Then compares storage of what was seeded: the disk store (bytes as
``du`` counts them, and files; its packs and its pool apart too) against
the same tiles written as mod_tile ``.meta`` files and as one PNG file per
tile.

The daemon runs with 2 workers and 1 more reserved for interactive
requests (the defaults on 2 cores: seeding has both) and, for comparison,
with none reserved. Usage: .venv/bin/python bench/seed.py

``--peer``: Debian 12's renderd 0.6.1 (bench/setup-renderd installs it)
against renderd-py with the default configuration, fresh daemons per run,
alternating, on the same PostGIS, style and metatiles: the data's extent
at z10-19 and a mostly empty box at z10-16, seeded with ``render_list -n 2``
and ``renderd-py seed``. While each renderd-py seed runs, a user asks
nginx for missing tiles at a low rate; the same requests on an idle stack
are the reference. Usage: .venv/bin/python bench/seed.py --peer [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# this folder after the standard library: bench/http.py must not hide the stdlib's http
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _HERE] + [_HERE]
import urllib.error  # noqa: E402  (after the path is fixed: it imports the stdlib's http)
import urllib.request  # noqa: E402

from common import (ROOT, WORLD_LAYER, cpu_seconds, free_port, helsinki, osm_layer, osm_lnglat_bbox,  # noqa: E402
                    run_plain, start_daemon, stop_daemon, write_config)
from renderd import config as _config  # noqa: E402
from renderd.store import open_store  # noqa: E402
from renderd.tilemath import index_tile  # noqa: E402
from renderd.tools import metafile  # noqa: E402
from renderd.tools.area import Area  # noqa: E402

WORLD = ("world", "-180,-85,180,85", (0, 7))


def plan(seeds) -> list:
    jobs = []
    for layer, bbox, (lo, hi) in seeds:
        area = Area.from_bbox(bbox)
        for z in range(lo, hi + 1):
            jobs += [(layer, m) for m in area.metatiles(z)]
    return jobs


def seed_all(cfg: Path, seeds) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    out = []
    for layer, bbox, (lo, hi) in seeds:
        r = subprocess.run([sys.executable, "-m", "renderd.cli.main", "seed", "-c", str(cfg), "--layer", layer,
                            "--zoom", f"{lo}-{hi}", "--bbox", bbox, "--json", "-q", "--force"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench: seed failed: {r.stderr.strip()}")
        out.append(json.loads(r.stdout))
    return time.perf_counter() - t0, out


def du(path: Path) -> tuple[int, int, int]:
    """(bytes on disk as du counts them, apparent bytes, files)."""
    on_disk = int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True,
                                 text=True, check=True).stdout.split()[0])
    apparent = int(subprocess.run(["du", "-s", "--apparent-size", "--block-size=1", str(path)],
                                  capture_output=True, text=True, check=True).stdout.split()[0])
    files = sum(len(f) for _, _, f in os.walk(path))
    return on_disk, apparent, files


def write_other_layouts(cfg, layers: list[str], meta_dir: Path, png_dir: Path) -> tuple[int, int, int, int]:
    """The stored tiles again, as mod_tile .meta files and one PNG per tile.
    Returns (tiles, distinct within their metatiles, bytes tile by tile,
    bytes of each distinct content once)."""
    store = open_store(cfg.store)
    tiles = unique = tile_bytes = 0
    sizes: dict[str, int] = {}
    for layer in layers:
        for idx in store.iter_indexes(layer):
            blobs = store.get_metatile(layer, idx.meta)[1]
            by_xy = {}
            for i, h in enumerate(idx.hashes):
                if h in blobs:
                    t = index_tile(idx.meta, i)
                    by_xy[(t.x, t.y)] = blobs[h]
                    tile_bytes += len(blobs[h])
                    sizes[h] = len(blobs[h])
                    p = png_dir / layer / str(t.z) / str(t.x) / f"{t.y}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(blobs[h])
            tiles += len(by_xy)
            unique += len(blobs)
            for (x0, y0), mf in metafile.encode_tiles(idx.meta.z, by_xy).items():
                metafile.write(metafile.meta_path(meta_dir, idx.meta.z, x0, y0, style=layer), mf)
    return tiles, unique, tile_bytes, sum(sizes.values())


# --- --peer: Debian's renderd 0.6.1 side by side ---------------------------------

SPARSE_BOX = "24.8,60.1,25.3,60.3"
#: Debian's DejaVu (fonts-dejavu-core, which renderd pulls in): the same font files on both sides
FONTS = "/usr/share/fonts/truetype/dejavu"
#: seconds between two requests of the user asking for missing tiles during a seed
USER_INTERVAL = 0.25


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def mapnik31_style(tmp: Path, pg) -> Path:
    """The project's OSM style as Debian's renderd (Mapnik 3.1) loads it. It has
    no entities and its PostGIS settings are a Map-level datasource template
    that the layers inherit; what Mapnik 3.1 lacks is our placeholders, so
    they are filled in here, with the values renderd-py's renderer uses."""
    from renderd.render.mapnik_renderer import expand_style
    prm = pg.params
    values = {"host": prm["host"], "port": str(prm["port"]), "user": prm["user"], "dbname": prm["dbname"],
              "password": "", "font_dir": FONTS}
    out = tmp / "osm-mapnik31.xml"
    out.write_text(expand_style((ROOT / "styles/osm.xml").read_text(), values, "styles/osm.xml"))
    return out


class Peer:
    """Debian's renderd on a socket of its own, with a fresh tile directory per start."""

    def __init__(self, tmp: Path, style: Path):
        self.dir = tmp / "renderd"
        self.sock = self.dir / "renderd.sock"
        self.tiles = self.dir / "tiles"
        self.conf = self.dir / "renderd.conf"
        self.dir.mkdir(exist_ok=True)
        self.conf.write_text(f"""[renderd]
socketname={self.sock}
num_threads=2
tile_dir={self.tiles}
stats_file={self.dir}/renderd.stats

[mapnik]
plugins_dir=/usr/lib/mapnik/3.1/input
font_dir={FONTS}
font_dir_recurse=false

[osm]
URI=/osm/
XML={style}
HOST=localhost
TILESIZE=256
MAXZOOM=19
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        shutil.rmtree(self.tiles, ignore_errors=True)
        self.tiles.mkdir(parents=True)
        self.log = open(self.dir / "renderd.log", "w")
        self.proc = subprocess.Popen(["renderd", "-f", "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: renderd exited; see {self.dir / 'renderd.log'}")
            if self._listening() and self._maps_loaded():
                return
            time.sleep(0.1)
        raise SystemExit("bench: renderd did not start")

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.sock))
                return True
            except OSError:
                return False

    def _maps_loaded(self) -> bool:
        """Each of the 2 render threads has loaded the style (as renderd-py's
        workers have before READY): after load_map a thread logs the map's
        projection (for EPSG:3857 given by code, as a warning that it uses
        web mercator all the same)."""
        self.log.flush()
        text = (self.dir / "renderd.log").read_text()
        return text.count("Unknown projection string") + text.count("projection settings") >= 2

    def seed(self, metas: list) -> tuple[float, float, int]:
        """render_list -n 2 over one tile per metatile; (wall s, CPU s of renderd, .meta files)."""
        lines = "".join(f"{m.x0} {m.y0} {m.z}\n" for m in metas)
        cpu0 = cpu_seconds([self.proc.pid])
        t0 = time.perf_counter()
        r = subprocess.run(["render_list", "-n", "2", "-m", "osm", "-s", str(self.sock), "-t", str(self.tiles),
                            "-z", "0", "-Z", "19"], input=lines, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench: render_list failed: {r.stderr.strip()[-300:]}")
        metafiles = [f.stat().st_size for f in self.tiles.rglob("*.meta")]
        if sum(metafiles) < 1000 * len(metafiles):
            raise SystemExit(f"bench: renderd wrote {len(metafiles)} .meta files of {sum(metafiles)} bytes: "
                             f"see {self.dir / 'renderd.log'}")
        return wall, cpu_seconds([self.proc.pid]) - cpu0, len(metafiles)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()


class Stack:
    """renderd-py with the configuration a new user writes (no [daemon] keys but
    the broker and the log level: workers, reserved, nice_gap at their
    defaults), nginx in front, a fresh store per start."""

    def __init__(self, tmp: Path, pg, daemon_extra: str = ""):
        self.tmp = tmp / "ours"
        self.tmp.mkdir(exist_ok=True)
        self.port, self.metrics = free_port(), free_port()
        self.cfg_path = self.tmp / "renderd-py.toml"
        self.cfg_path.write_text(f"""
[daemon]
broker = "ipc://{self.tmp}/broker.sock"
log_level = "warning"
{daemon_extra}
[store]
kind = "disk"
path = "{self.tmp}/store"
[http]
listen = "127.0.0.1:{self.port}"
metrics = "127.0.0.1:{self.metrics}"
prefix = "{self.tmp}/nginx"
""" + osm_layer(pg, font_dir=FONTS) + osm_layer(pg, "users", FONTS))
        self.cfg = _config.load(self.cfg_path, env={})
        self.daemon: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None

    def start(self) -> None:
        from renderd import nginx
        shutil.rmtree(self.tmp / "store", ignore_errors=True)
        self.daemon = start_daemon(self.cfg_path, self.cfg.daemon.broker, self.cfg.daemon.processes)
        conf = nginx.write_conf(self.cfg, self.tmp / "nginx")
        self.nginx = subprocess.Popen(["nginx", "-p", str(self.tmp / "nginx"), "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.nginx.poll() is not None:
                    raise SystemExit("bench: nginx did not start") from None
                time.sleep(0.05)

    def pids(self) -> list[int]:
        return [self.daemon.pid] + children(self.daemon.pid)

    def seed(self, bbox: str, zooms: tuple[int, int]) -> tuple[float, float, int]:
        cpu0 = cpu_seconds(self.pids())
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "renderd.cli.main", "seed", "-c", str(self.cfg_path),
                            "--layer", "osm", "--zoom", f"{zooms[0]}-{zooms[1]}", "--bbox", bbox,
                            "--json", "-q"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench: seed failed: {r.stderr.strip()}")
        return wall, cpu_seconds(self.pids()) - cpu0, json.loads(r.stdout).get("rendered", 0)

    def memory(self) -> dict[str, float]:
        """PSS (MB) of the daemon and of each worker, by role."""
        from renderd.client import Client
        with Client(self.cfg.daemon.broker) as c:
            workers = c.status()["worker_list"]
        out = {"daemon": pss_mb(self.daemon.pid)}
        for w in workers:
            out[f"{w['role']} {w['pid']}"] = pss_mb(w["pid"])
        return out

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            self.nginx.wait(20)
        if self.daemon is not None:
            stop_daemon(self.daemon)
        self.nginx = self.daemon = None


class User(threading.Thread):
    """Asks nginx for missing tiles one at a time, one every ``interval``
    seconds (or at once after a slower answer), until told to stop or out of
    tiles; keeps (path, seconds, X-Cache) of each request it started."""

    def __init__(self, base: str, paths: list[str], interval: float = USER_INTERVAL):
        super().__init__(daemon=True)
        self.base, self.paths, self.interval = base, paths, interval
        self.halt = threading.Event()
        self.samples: list[tuple[str, float, str]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        start = time.perf_counter()
        for i, path in enumerate(self.paths):
            if self.halt.is_set():
                return
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.base + path, timeout=120) as r:
                    r.read()
                    cache = r.headers.get("X-Cache", "?")
            except (urllib.error.URLError, OSError) as e:
                self.errors.append(f"{path}: {e}")
                continue
            self.samples.append((path, time.perf_counter() - t0, cache))
            self.halt.wait(max(0.0, start + (i + 1) * self.interval - time.perf_counter()))


def user_paths(metas: list) -> list[str]:
    """One tile in each of these metatiles of the ``users`` layer (the same
    style and data as ``osm``, a tile set of its own: never joined with a
    seed's jobs, always missing in a fresh store), in a fixed mixed order."""
    paths = [f"/tiles/users/{m.z}/{m.x0 + min(3, m.n - 1)}/{m.y0 + min(4, m.n - 1)}.png" for m in metas]
    random.Random(13).shuffle(paths)
    return paths


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def peer_main(args: argparse.Namespace) -> None:
    if not shutil.which("render_list"):
        subprocess.run([str(Path(__file__).with_name("setup-renderd"))], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-peer-"))
    pg = peer = stack = None
    try:
        pg = helsinki()
        dense_box = osm_lnglat_bbox(pg)
        extents = {"dense": (dense_box, (10, 19)), "sparse": (SPARSE_BOX, (10, 16))}
        metas = {name: [m for z in range(lo, hi + 1) for m in Area.from_bbox(box).metatiles(z)]
                 for name, (box, (lo, hi)) in extents.items()}
        print(f"dense: the data's extent {dense_box} z10-19, {len(metas['dense'])} metatiles; "
              f"sparse: {SPARSE_BOX} z10-16, {len(metas['sparse'])} metatiles")
        peer = Peer(tmp, mapnik31_style(tmp, pg))
        stack = Stack(tmp, pg, args.daemon)
        d = stack.cfg.daemon
        print(f"renderd-py: workers = {d.workers}, reserved = {d.reserved}, nice_gap = {d.nice_gap} "
              f"({'defaults' if not args.daemon else args.daemon!r}); renderd: num_threads = 2, render_list -n 2")
        paths = user_paths(metas["dense"])
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in extents}
        cpu_ratios: dict[str, list[float]] = {name: [] for name in extents}
        idle: dict[str, list[float]] = {}
        busy: dict[str, list[tuple[str, float]]] = {name: [] for name in extents}
        memory: dict[str, float] = {}
        for rnd in range(1, args.rounds + 1):
            # the user's requests on an idle stack: the reference
            stack.start()
            try:
                user = User(f"http://127.0.0.1:{stack.port}", paths)
                user.run()
                for path, sec, _ in user.samples:
                    idle.setdefault(path, []).append(sec)
            finally:
                stack.stop()
            for name, (box, zooms) in extents.items():
                order = ["renderd", "ours"] if (rnd + (name == "sparse")) % 2 else ["ours", "renderd"]
                got = {}
                for side in order + ["users"]:
                    if side == "renderd":
                        peer.start()
                        try:
                            got[side] = peer.seed(metas[name])
                        finally:
                            peer.stop()
                        continue
                    stack.start()
                    try:
                        if side == "ours":
                            got[side] = stack.seed(box, zooms)
                            continue
                        # a run of its own, so that the user's renders do not slow the seed compared
                        user = User(f"http://127.0.0.1:{stack.port}", paths)
                        user.start()
                        got[side] = stack.seed(box, zooms)
                        user.halt.set()
                        user.join()
                        busy[name] += [(pth, sec) for pth, sec, _ in user.samples]
                        if user.errors:
                            print(f"  user errors: {user.errors[:3]}")
                        if not memory:
                            memory = stack.memory()
                    finally:
                        stack.stop()
                n = len(metas[name])
                (tw, cw, mw), (to, co, mo), (tu, _, _) = got["renderd"], got["ours"], got["users"]
                rw, ro = n / tw, n / to
                rates[name].append((rw, ro))
                cpu_ratios[name].append(cw / co)
                print(f"round {rnd} {name:6} ({' then '.join(order)}): renderd {rw:6.2f} metatiles/s "
                      f"({tw:5.2f} s wall, {cw:5.2f} s CPU, {mw} .meta)  renderd-py {ro:6.2f} metatiles/s "
                      f"({to:5.2f} s wall, {co:5.2f} s CPU, {mo} rendered)  ratio {ro / rw:5.2f} "
                      f"(CPU per metatile {cw / co:5.2f}); renderd-py with the user asking: "
                      f"{n / tu:6.2f} metatiles/s", flush=True)
        goals = {"dense": 1.5, "sparse": 4.0}
        summary: dict = {"rounds": args.rounds, "daemon": args.daemon or "defaults"}
        for name in extents:
            ratios = [o / w for w, o in rates[name]]
            med = statistics.median(ratios)
            print(f"{name}: ratio per round {', '.join(f'{r:.2f}' for r in ratios)}; median {med:.2f} "
                  f"(renderd median {statistics.median(w for w, _ in rates[name]):.2f}/s, renderd-py "
                  f"{statistics.median(o for _, o in rates[name]):.2f}/s; goal {goals[name]}x: "
                  f"{'met' if med >= goals[name] else 'not met'}); CPU per metatile, renderd's over "
                  f"renderd-py's: {', '.join(f'{r:.2f}' for r in cpu_ratios[name])}, median "
                  f"{statistics.median(cpu_ratios[name]):.2f}")
            summary[name] = {"ratios": ratios, "median": med, "cpu_ratios": cpu_ratios[name]}
        for name in extents:
            during = [sec for _, sec in busy[name]]
            if not during:
                print(f"users during the {name} seed: no request finished during the seed")
                continue
            ref = [sec for pth, _ in busy[name] for sec in idle.get(pth, [])]
            p50, p99 = percentile(during, 0.5), percentile(during, 0.99)
            i50, i99 = percentile(ref, 0.5), percentile(ref, 0.99)
            print(f"users during the {name} seed: {len(during)} requests, p50 {p50 * 1000:6.1f} ms, "
                  f"p99 {p99 * 1000:6.1f} ms; the same tiles idle ({len(ref)}): p50 {i50 * 1000:6.1f} ms, "
                  f"p99 {i99 * 1000:6.1f} ms; ratios p50 {p50 / i50:.2f} (goal 1.5), p99 {p99 / i99:.2f} (goal 3)")
            summary[f"users_{name}"] = {"n": len(during), "p50": p50, "p99": p99, "idle_p50": i50,
                                        "idle_p99": i99}
        print("memory (PSS, MB, during the first dense seed): " +
              ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))
        summary["memory"] = memory
        print(json.dumps(summary))
    finally:
        for thing in (stack, peer, pg):
            if thing is not None:
                thing.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-two-workers", action="store_true", help="only the daemon with a reserved worker")
    ap.add_argument("--peer", action="store_true", help="Debian's renderd side by side, and users during seeds")
    ap.add_argument("--rounds", type=int, default=3, help="--peer: rounds of alternating runs")
    ap.add_argument("--daemon", default="", help="--peer: extra [daemon] lines for renderd-py, e.g. "
                                                  "'nice_gap = 0' (default: none, the defaults)")
    args = ap.parse_args()
    if args.peer:
        return peer_main(args)
    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-seed-"))
    pg = None
    try:
        pg = helsinki()
        seeds = [("osm", osm_lnglat_bbox(pg), (10, 16)), WORLD]
        layers_toml = WORLD_LAYER + osm_layer(pg)
        jobs = plan(seeds)
        print(f"{len(jobs)} metatiles: osm z10-16 over {seeds[0][1]}, world z0-7")

        cfg_path = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{tmp}/unused"', "tcp://127.0.0.1:1")
        t_plain = run_plain(list(_config.load(cfg_path).layers), jobs)
        rate_plain = len(jobs) / t_plain
        print(f"in-process limit, 2 plain Mapnik processes: {rate_plain:7.2f} metatiles/s ({t_plain:.1f} s)")

        results = {"metatiles": len(jobs), "plain_rate": rate_plain}
        variants = [(2, 1)] + ([] if args.skip_two_workers else [(2, 0)])
        for workers, reserved in variants:
            store_dir = tmp / f"store-{workers}"
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            cfg_path = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{store_dir}"', endpoint,
                                    workers=workers, reserved=reserved)
            proc = start_daemon(cfg_path, endpoint, workers + reserved)
            try:
                t, summaries = seed_all(cfg_path, seeds)
            finally:
                stop_daemon(proc)
            rendered = sum(s.get("rendered", 0) for s in summaries)
            rate = len(jobs) / t
            print(f"renderd-py seed, {workers} workers (and {reserved} reserved for interactive): {rate:7.2f} metatiles/s "
                  f"({t:.1f} s, {rendered} rendered)  ratio {rate / rate_plain:.2f}")
            results[f"seed_{workers}w{reserved}r"] = {"rate": rate, "ratio": rate / rate_plain, "rendered": rendered}

        cfg = _config.load(cfg_path)
        store_dir = Path(cfg.store.path)
        meta_dir, png_dir = tmp / "meta", tmp / "png"
        tiles, unique, tile_bytes, distinct_bytes = write_other_layouts(cfg, ["osm", "world"], meta_dir, png_dir)
        dup_share = 1 - unique / tiles if tiles else 0.0
        byte_share = 1 - distinct_bytes / tile_bytes if tile_bytes else 0.0
        print(f"{tiles} tiles stored, {unique} distinct within their metatiles; {tile_bytes / 1e6:.2f} MB "
              f"tile by tile, {distinct_bytes / 1e6:.2f} MB each distinct content once: duplicate share "
              f"{byte_share:.3f} of the bytes")
        ours, meta, png = du(store_dir), du(meta_dir), du(png_dir)
        for name, (on_disk, apparent, files) in (("renderd-py disk store", ours), ("mod_tile .meta", meta),
                                                 ("one PNG per tile", png)):
            print(f"{name:22} {on_disk / 1e6:9.2f} MB on disk ({apparent / 1e6:8.2f} MB apparent), {files:7} files")
        packs, pool = du(store_dir / "tiles"), du(store_dir / "blobs")
        for name, (on_disk, apparent, files) in (("  of which packs", packs), ("  of which the pool", pool)):
            print(f"{name:22} {on_disk / 1e6:9.2f} MB on disk ({apparent / 1e6:8.2f} MB apparent), {files:7} files")
        print(f"store vs .meta: {ours[0] / meta[0]:.3f} of the bytes (goal: at most {1 - byte_share:.3f}); "
              f"files: {png[2] / max(ours[2], 1):.1f}x fewer than one file per tile (goal: 30x)")
        stats = subprocess.run([sys.executable, "-m", "renderd.cli.main", "stats", "-c", str(cfg_path),
                                "--layer", "world", "--json"], capture_output=True, text=True)
        if stats.returncode == 0:
            total = json.loads(stats.stdout).get("total", {})
            print(f"world duplicate share (stats): {total.get('duplicate_share')}")
            results["world_duplicate_share"] = total.get("duplicate_share")
        results.update({"tiles": tiles, "within_metatile_duplicate_share": dup_share,
                        "tile_bytes": tile_bytes, "distinct_bytes": distinct_bytes,
                        "byte_duplicate_share": byte_share, "store": ours,
                        "packs": packs, "pool": pool, "meta": meta, "png": png})
        print(json.dumps(results))
    finally:
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
