"""Shared pieces of the benchmarks: the sample layers, a throwaway PostGIS
with the Helsinki extract, the plain-Mapnik baseline and a daemon runner."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from renderd import protocol as p  # noqa: E402
from renderd.client import Client  # noqa: E402
from renderd.tilemath import Meta, Tile, meta_at, meta_merc_bounds, metatile_size  # noqa: E402
from tests.fixtures.servers import PostgisServer, RedisServer, free_port  # noqa: E402,F401

WORLD_LAYER = f"""
[[layer]]
name = "world"
style = "{ROOT / 'styles/world.xml'}"
maxzoom = 12
format = "png256"
"""


def osm_layer(pg: PostgisServer, name: str = "osm", font_dir: str = "") -> str:
    prm = pg.params
    fonts = f'font_dir = "{font_dir}"\n' if font_dir else ""
    return f"""
[[layer]]
name = "{name}"
style = "{ROOT / 'styles/osm.xml'}"
minzoom = 10
maxzoom = 19
format = "png256"
{fonts}params = {{ host = "{prm['host']}", port = "{prm['port']}", user = "{prm['user']}", dbname = "{prm['dbname']}", password = "" }}
"""


def cpu_seconds(pids: list) -> float:
    """CPU seconds (user + system, all threads) used so far by these processes."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def helsinki() -> PostgisServer:
    pg = PostgisServer().start()
    pg.import_osm(ROOT / "data/osm/Helsinki.osm.pbf")
    return pg


def osm_extent(pg: PostgisServer) -> tuple[float, float, float, float]:
    """Web Mercator extent of the imported lines."""
    import psycopg2
    with psycopg2.connect(pg.params["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("select ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) from "
                    "(select ST_Extent(way) e from planet_osm_line) s")
        return cur.fetchone()


def osm_lnglat_bbox(pg: PostgisServer) -> str:
    import mercantile
    minx, miny, maxx, maxy = osm_extent(pg)
    w, s = mercantile.lnglat(minx, miny)
    e, n = mercantile.lnglat(maxx, maxy)
    return f"{w:.6f},{s:.6f},{e:.6f},{n:.6f}"


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
    from renderd.tilemath import MERC_HALF
    minx, miny, maxx, maxy = osm_extent(pg)
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

def write_config(tmp: Path, layers_toml: str, store_toml: str, endpoint: str,
                 workers: int = 2, reserved: int = 0) -> Path:
    cfg = tmp / "bench.toml"
    cfg.write_text(f"""
[daemon]
broker = "{endpoint}"
workers = {workers}
reserved = {reserved}
queue_size = 100000
recent_seconds = 0.0
log_level = "warning"
[store]
{store_toml}
{layers_toml}
""")
    return cfg


def start_daemon(cfg: Path, endpoint: str, workers: int = 2, tree: Path | None = None) -> subprocess.Popen:
    """``renderd-py serve`` with ``workers`` workers ready (of the code in
    ``tree``, another checkout, if given)."""
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-m", "renderd.cli.main", "serve", "-c", str(cfg)],
                            stdin=subprocess.DEVNULL, cwd=tree, env=env)
    with Client(endpoint) as c:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if c.status(timeout=1)["workers"]["total"] >= workers:
                    return proc
            except Exception:
                time.sleep(0.2)
    proc.kill()
    raise SystemExit("bench: the daemon did not start")


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def run_daemon(cfg: Path, endpoint: str, jobs: list[tuple[str, Meta]]) -> tuple[float, dict]:
    proc = start_daemon(cfg, endpoint)
    try:
        with Client(endpoint) as c:
            t0 = time.perf_counter()
            failed = render_all(c, jobs, frozenset({"nodata"}))
            elapsed = time.perf_counter() - t0
            st = c.status()
        if failed:
            print(f"  warning: {failed} metatiles failed", file=sys.stderr)
        return elapsed, st
    finally:
        stop_daemon(proc)


def render_all(c: Client, jobs: list[tuple[str, Meta]], flags: frozenset[str] = frozenset()) -> int:
    """Ask for every metatile at once and wait for all the answers; returns how many failed."""
    for name, meta in jobs:
        c.send(p.RenderRequest(b"", name, _tile(meta), p.BULK, 600_000, flags))
    failed = 0
    for _ in jobs:
        r = c.recv(600)
        if r is None:
            raise SystemExit("bench: the daemon stopped answering")
        failed += not r.ok
    return failed


def _tile(meta: Meta) -> Tile:
    return Tile(meta.z, meta.x0, meta.y0)


