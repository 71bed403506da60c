#!/usr/bin/env python3
"""Render throughput: plain Mapnik processes vs the daemon, in one run.

(a) the limit: 2 plain processes calling Mapnik directly, each metatile
    drawn once and every one of its tiles encoded into memory;
(b) ``renderd-py serve`` with 2 workers, the same metatiles asked for over
    ZeroMQ, written to the disk store, then (c) to a Redis store.

Prints metatiles/s for each, the ratios (b)/(a) and (c)/(a), and the PNG
encodes that deduplication saved. The metatiles: the sample world style at
zooms 2-6 and, unless --no-osm, the Helsinki extract in a throwaway PostGIS
at zooms 14-18. Usage: .venv/bin/python bench/render.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from renderd import config as _config  # noqa: E402
from renderd import protocol as p  # noqa: E402
from renderd.client import Client  # noqa: E402
from renderd.tilemath import Meta, meta_at, meta_merc_bounds, metatile_size  # noqa: E402
from tests.fixtures.servers import PostgisServer, RedisServer, free_port  # noqa: E402

WORLD_ZOOMS = {2: None, 3: None, 4: None, 5: None, 6: 16}  # None: every metatile


def world_metatiles() -> list[Meta]:
    out = []
    for z, limit in WORLD_ZOOMS.items():
        n = metatile_size(z)
        side = (1 << z) // n
        metas = [meta_at(z, mx, my) for my in range(side) for mx in range(side)]
        out += metas[:limit] if limit else metas
    return out


def osm_metatiles(pg: PostgisServer, zooms=range(14, 19), limit: int = 40) -> list[Meta]:
    """Metatiles over the imported data's extent."""
    import psycopg2
    from renderd.tilemath import MERC_HALF
    with psycopg2.connect(pg.params["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("select ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) from "
                    "(select ST_Extent(way) e from planet_osm_line) s")
        minx, miny, maxx, maxy = cur.fetchone()
    out = []
    for z in zooms:
        n = metatile_size(z)
        world = 2 * MERC_HALF
        span = world / (1 << z) * n
        mx0, mx1 = int((minx + MERC_HALF) // span), int((maxx + MERC_HALF) // span)
        my0, my1 = int((MERC_HALF - maxy) // span), int((MERC_HALF - miny) // span)
        out += [meta_at(z, mx, my) for mx in range(mx0, mx1 + 1) for my in range(my0, my1 + 1)]
    return out[:limit]


# --- (a) the limit: plain processes calling Mapnik --------------------------

_maps: dict = {}


def _load(layers: list) -> int:
    import mapnik
    from renderd.render.mapnik_renderer import expand_style, style_params
    for layer in layers:
        m = mapnik.Map(256, 256)
        text = Path(layer.style).read_text()
        mapnik.load_map_from_string(m, expand_style(text, style_params(layer), layer.style), False,
                                    str(Path(layer.style).parent) + "/")
        m.buffer_size = layer.buffer
        _maps[layer.name] = (m, layer.format)
    return os.getpid()


def _plain_render(job: tuple[str, Meta]) -> int:
    import mapnik
    name, meta = job
    m, fmt = _maps[name]
    size = meta.n * 256
    m.resize(size, size)
    m.zoom_to_box(mapnik.Box2d(*meta_merc_bounds(meta)))
    im = mapnik.Image(size, size)
    mapnik.render(m, im)
    total = 0
    for dx in range(meta.n):
        for dy in range(meta.n):
            total += len(im.view(dx * 256, dy * 256, 256, 256).to_string(fmt))
    return total


def run_plain(layers: list, jobs: list[tuple[str, Meta]], procs: int = 2) -> float:
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.map(_load, [layers] * procs, chunksize=1)
        t0 = time.perf_counter()
        pool.map(_plain_render, jobs, chunksize=1)
        return time.perf_counter() - t0


# --- (b) through the daemon ---------------------------------------------------

def write_config(tmp: Path, layers_toml: str, store_toml: str, endpoint: str) -> Path:
    cfg = tmp / "bench.toml"
    cfg.write_text(f"""
[daemon]
broker = "{endpoint}"
workers = 2
reserved = 0
queue_size = 100000
recent_seconds = 0.0
log_level = "warning"
[store]
{store_toml}
{layers_toml}
""")
    return cfg


def run_daemon(cfg: Path, endpoint: str, jobs: list[tuple[str, Meta]]) -> tuple[float, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "renderd.cli.main", "serve", "-c", str(cfg)],
                            stdin=subprocess.DEVNULL)
    try:
        with Client(endpoint) as c:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if c.status(timeout=1)["workers"]["total"] >= 2:
                        break
                except Exception:
                    time.sleep(0.2)
            t0 = time.perf_counter()
            for name, meta in jobs:
                c.send(p.RenderRequest(b"", name, _tile(meta), p.BULK, 600_000, frozenset({"nodata"})))
            failed = 0
            for _ in jobs:
                r = c.recv(600)
                if r is None:
                    raise SystemExit("bench: the daemon stopped answering")
                failed += not r.ok
            elapsed = time.perf_counter() - t0
            st = c.status()
        if failed:
            print(f"  warning: {failed} metatiles failed", file=sys.stderr)
        return elapsed, st
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _tile(meta: Meta):
    from renderd.tilemath import Tile
    return Tile(meta.z, meta.x0, meta.y0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-osm", action="store_true", help="world style only (no PostGIS)")
    ap.add_argument("--repeat", type=int, default=1, help="render the set this many times per side")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="renderd-bench-"))
    layers_toml = f"""
[[layer]]
name = "world"
style = "{ROOT / 'styles/world.xml'}"
maxzoom = 12
format = "png256"
"""
    pg = redis = None
    try:
        jobs = [("world", m) for m in world_metatiles()]
        if not args.no_osm:
            pg = PostgisServer().start()
            pg.import_osm(ROOT / "data/osm/Helsinki.osm.pbf")
            prm = pg.params
            layers_toml += f"""
[[layer]]
name = "osm"
style = "{ROOT / 'styles/osm.xml'}"
minzoom = 10
maxzoom = 19
format = "png256"
params = {{ host = "{prm['host']}", port = "{prm['port']}", user = "{prm['user']}", dbname = "{prm['dbname']}", password = "" }}
"""
            jobs += [("osm", m) for m in osm_metatiles(pg)]
        jobs = jobs * args.repeat
        cfg_plain = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{tmp}/unused"', "tcp://127.0.0.1:1")
        layers = list(_config.load(cfg_plain).layers)
        zooms = sorted({m.z for _, m in jobs})
        print(f"{len(jobs)} metatiles ({sum(m.n * m.n for _, m in jobs)} tiles), zooms {zooms}, "
              f"layers {sorted({n for n, _ in jobs})}, 2 processes / 2 workers")

        t_plain = run_plain(layers, jobs)
        rate_plain = len(jobs) / t_plain
        print(f"(a) plain Mapnik, 2 processes:        {rate_plain:7.2f} metatiles/s  ({t_plain:.2f} s)")

        results = {}
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg = write_config(tmp, layers_toml, f'kind = "disk"\npath = "{tmp}/disk"', endpoint)
        t, st = run_daemon(cfg, endpoint, jobs)
        results["disk"] = (t, st)
        redis = RedisServer(tmp)
        redis.start()
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg = write_config(tmp, layers_toml, f'kind = "redis"\nurl = "{redis.url}"', endpoint)
        results["redis"] = run_daemon(cfg, endpoint, jobs)

        out = {"metatiles": len(jobs), "plain_rate": rate_plain}
        for kind, (t, st) in results.items():
            rate = len(jobs) / t
            work = st.get("work", {})
            print(f"(b) renderd-py serve, {kind:5} store:     {rate:7.2f} metatiles/s  ({t:.2f} s)  "
                  f"ratio {rate / rate_plain:.2f}  encodes {int(work.get('encoded', 0))}, "
                  f"saved by dedup {int(work.get('encodes_saved', 0))}")
            out[kind] = {"rate": rate, "ratio": rate / rate_plain, "encoded": work.get("encoded"),
                         "encodes_saved": work.get("encodes_saved")}
        print(json.dumps(out))
    finally:
        if redis:
            redis.stop()
        if pg:
            pg.stop()


if __name__ == "__main__":
    main()
