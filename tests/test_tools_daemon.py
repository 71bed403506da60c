"""seed, export --render-missing and expire --mode render end to end: the real
`renderd-py serve` (tests/fixtures/daemon.py) on a loopback port, real
Mapnik renders, real stores (a directory and a real redis-server), the
commands run as a user runs them."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import mercantile
import pytest
import shapely
from pmtiles.reader import MmapSource, Reader, all_tiles
from shapely.geometry import box, shape

from renderd import protocol as p
from renderd.tilemath import Tile, index_tile, metatile_of
from renderd.tools.area import Area

DATA = Path(__file__).parent / "data"
AREA = str(DATA / "tools_area.geojson")


def oracle_metatiles(path: str, zooms: range) -> set:
    """Metatiles with a tile whose interior meets the polygons, tile by tile."""
    doc = json.loads(Path(path).read_text())
    geom = shapely.union_all([shape(f["geometry"]) for f in doc["features"] if f["geometry"]])
    out = set()
    for z in zooms:
        for t in mercantile.tiles(*geom.bounds, zooms=[z]):
            b = mercantile.bounds(t)
            tb = box(b.west, b.south, b.east, b.north)
            if geom.intersects(tb) and not geom.touches(tb):
                out.add(metatile_of(t.z, t.x, t.y))
    return out


def stored(store, layer: str) -> set:
    return {idx.meta for idx in store.iter_indexes(layer)}


def summary_of(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["disk", "redis", "cluster"])
def test_seed_polygon_renders_exactly_the_intersecting_metatiles(renderd_daemon, request, kind):
    urls = {"redis": "redis_url", "cluster": "redis_cluster_url"}
    store_url = request.getfixturevalue(urls[kind]) if kind in urls else None
    d = renderd_daemon(store=store_url)
    expect = oracle_metatiles(AREA, range(0, 9))
    bbox_count = sum(1 for z in range(9) for _ in mercantile.tiles(*Area.from_geojson(AREA).bbox, zooms=[z]))
    assert len(expect) == 42 and bbox_count > 1000
    r = d.run("seed", "--layer", "shapes", "--zoom", "0-8", "--area", AREA, "--json", timeout=120)
    assert r.returncode == 0, r.stderr + d.output()
    s = summary_of(r.stdout)
    assert (s["metatiles"], s["rendered"], s["skipped"], s["failed"]) == (42, 42, 0, 0)
    assert s["unique_tiles"] > 0 and s["bytes"] > 0 and s["interrupted"] is False
    store = d.store()
    assert stored(store, "shapes") == expect
    assert d.rendered() == 42
    assert "progress: " in r.stderr  # plain lines when stderr is not a terminal
    # a second run renders nothing: everything is skipped from the store
    r = d.run("seed", "--layer", "shapes", "--zoom", "0-8", "--area", AREA, "--json")
    s = summary_of(r.stdout)
    assert r.returncode == 0 and (s["rendered"], s["skipped"]) == (0, 42)
    assert d.rendered() == 42
    # coverage is complete
    r = d.run("coverage", "--layer", "shapes", "--zoom", "0-8", "--area", AREA, "--compact")
    rep = json.loads(r.stdout)
    assert rep["coverage"] == 1.0 and rep["cached"] == rep["required"] > 0
    # --force renders them all again
    r = d.run("seed", "--layer", "shapes", "--zoom", "0-3", "--area", AREA, "--force", "--json")
    assert summary_of(r.stdout)["rendered"] == 4 and d.rendered() == 46


def test_seed_interrupted_by_sigint_continues_and_renders_nothing_twice(renderd_daemon):
    d = renderd_daemon()
    bbox = "5,45,45,70"
    total = Area.from_bbox(bbox).count_metatiles((0, 9))
    assert total == 115
    proc = d.spawn("seed", "--layer", "shapes", "--zoom", "0-9", "--bbox", bbox, "--concurrency", "2", "--json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and d.rendered() < 10:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    first = summary_of(out)
    assert first["interrupted"] is True and 10 <= first["rendered"] < total and first["failed"] == 0
    assert "run the same command again to continue" in err and "Traceback" not in err
    assert d.rendered() == first["rendered"] == len(stored(d.store(), "shapes"))

    r = d.run("seed", "--layer", "shapes", "--zoom", "0-9", "--bbox", bbox, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    second = summary_of(r.stdout)
    assert second["skipped"] == first["rendered"]
    assert first["rendered"] + second["rendered"] == total
    assert d.rendered() == total  # every metatile rendered once, none twice
    assert len(stored(d.store(), "shapes")) == total


def test_coverage_drops_as_expected_after_expire_delete(renderd_daemon, redis_url):
    d = renderd_daemon(store=redis_url)
    bbox = "10,50,40,70"
    assert d.run("seed", "--layer", "shapes", "--zoom", "0-7", "--bbox", bbox, "-q").returncode == 0
    rep = json.loads(d.run("coverage", "--layer", "shapes", "--zoom", "0-7", "--bbox", bbox).stdout)
    assert rep["coverage"] == 1.0
    required = rep["required"]
    area = Area.from_bbox(bbox)
    # one changed tile at zoom 6 expires its parents (zooms 4-5) and children (7-14)
    changed = Tile(6, 36, 18)
    r = d.run("expire", "--layer", "shapes", "--min-zoom", "4", "--mode", "delete", input="6/36/18\nrubbish\n")
    assert r.returncode == 0, r.stderr
    assert "1 malformed" in r.stdout and "malformed line 2: 'rubbish'" in r.stdout
    gone = [m for m in (metatile_of(z, changed.x >> (6 - z), changed.y >> (6 - z)) for z in (4, 5, 6))]
    gone.append(metatile_of(7, changed.x * 2, changed.y * 2))
    lost = sum(sum(area.tile_mask(m)) for m in gone)
    assert "metatiles: 4 deleted" in r.stdout
    rep = json.loads(d.run("coverage", "--layer", "shapes", "--zoom", "0-7", "--bbox", bbox).stdout)
    assert rep["required"] == required and rep["cached"] == required - lost
    assert rep["coverage"] == round((required - lost) / required, 4) < 1.0
    for lvl in rep["zoom_levels"]:
        for m in lvl["metatiles"]:
            if any((m["x"], m["y"], lvl["level"]) == (g.x0, g.y0, g.z) for g in gone):
                assert m["cached"] == 0 and m["coverage"] == 0.0
            else:
                assert m["coverage"] == 1.0


@pytest.mark.parametrize("fmt", ["mbtiles", "pmtiles"])
def test_export_render_missing_round_trips_every_tile(renderd_daemon, tmp_path, fmt):
    d = renderd_daemon()
    area_args = ["--layer", "shapes", "--zoom", "2-7", "--area", AREA]
    # half seeded: zooms 2-5 only
    assert d.run("seed", "--layer", "shapes", "--zoom", "2-5", "--area", AREA, "-q").returncode == 0
    out = tmp_path / f"out.{fmt}"
    r = d.run("export", *area_args, "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    partial = summary_of(r.stdout)
    assert partial["missing"] > 0 and partial["rendered"] == 0
    before = d.rendered()
    r = d.run("export", *area_args, "-o", str(out), "--render-missing", "--json")
    assert r.returncode == 0, r.stderr
    full = summary_of(r.stdout)
    assert full["missing"] == 0 and full["rendered"] == d.rendered() - before > 0
    assert full["tiles"] == partial["tiles"] + partial["missing"]
    # every tile of the area, byte for byte as the store holds it
    store, area = d.store(), Area.from_geojson(AREA)
    expect = {}
    for z in range(2, 8):
        for m in area.metatiles(z):
            idx, blobs = store.get_metatile("shapes", m)
            for i, inside in enumerate(area.tile_mask(m)):
                if inside:
                    t = index_tile(m, i)
                    expect[(t.z, t.x, t.y)] = blobs.get(idx.hashes[i])
    if fmt == "mbtiles":
        db = sqlite3.connect(out)
        got = {(z, x, (1 << z) - 1 - row): bytes(data) for z, x, row, data in
               db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")}
        db.close()
    else:
        with open(out, "rb") as f:
            src = MmapSource(f)
            got = {(z, x, y): bytes(data) for (z, x, y), data in all_tiles(src)}
            assert Reader(src).header()["clustered"]
    assert got == expect and len(got) == full["tiles"]
    assert sum(len(v) for v in got.values()) == full["tile_bytes"]
    assert full["unique_tiles"] < full["tiles"]  # the sea is stored once


def test_expire_render_rerenders_stored_metatiles_at_expiry_priority(renderd_daemon):
    d = renderd_daemon()
    bbox = "20,55,30,65"
    assert d.run("seed", "--layer", "shapes", "--zoom", "3-8", "--bbox", bbox, "-q").returncode == 0
    seeded = stored(d.store(), "shapes")
    before = d.status()
    r = d.run("expire", "--layer", "shapes", "--min-zoom", "3", "--mode", "render", "--json",
              input="8/145/75\n")
    assert r.returncode == 0, r.stderr
    s = summary_of(r.stdout)
    hit = {m for m in seeded if m.z <= 8 and
           metatile_of(m.z, 145 >> (8 - m.z), 75 >> (8 - m.z)) == m}
    assert (s["metatiles"], s["rendered"], s["failed"]) == (len(hit), len(hit), 0) and len(hit) == 6
    after = d.status()
    assert after["counters"]["rendered"] - before["counters"]["rendered"] == len(hit)
    assert after["render_count"]["expiry"] - before["render_count"].get("expiry", 0) == len(hit)
    store = d.store()
    assert not any(store.get_index("shapes", m).stale for m in seeded)


@pytest.mark.timeout(180)
def test_interactive_requests_are_served_while_a_long_seed_runs(renderd_daemon, postgis_dsn):
    """2 workers, 1 kept for interactive requests: a seed of metatiles that
    take 1 s each keeps one worker busy for many seconds; meanwhile a user's
    request for a missing tile is rendered at once by the other."""
    d = renderd_daemon(postgis=postgis_dsn, delay=1.0)
    proc = d.spawn("seed", "--layer", "slow", "--zoom", "0-4", "--bbox", "-179,-80,179,80",
                   "--concurrency", "8", "--grace", "1", "--json")
    try:
        deadline = time.monotonic() + 30
        while True:
            st = d.status()
            if st["queues"]["bulk"] >= 3 and st["running"] >= 1:
                break
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        waits = []
        with d.client(timeout=20) as c:
            for t in (Tile(6, 10, 20), Tile(7, 100, 40), Tile(8, 3, 200)):
                t0 = time.monotonic()
                reply = c.render("shapes", t, priority=p.MISSING)
                waits.append(time.monotonic() - t0)
                assert reply.ok and reply.tile[:4] == b"\x89PNG"
            t0 = time.monotonic()
            # a tile inside the box of tools_slow_style.xml, so that its query sleeps
            assert c.render("slow", Tile(9, 257, 257), priority=p.MISSING).ok
            slow_wait = time.monotonic() - t0
        st = d.status()
        assert proc.poll() is None and st["queues"]["bulk"] >= 1  # the seed is still going
        assert max(waits) < 1.0, waits         # not behind a 1 s bulk render, let alone the queue
        assert 1.0 <= slow_wait < 2.5, slow_wait  # one 1 s render, not the seed's queue of them
        print(f"interactive waits {waits}, slow layer {slow_wait:.2f}s, bulk queue {st['queues']['bulk']}")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    s = summary_of(out)
    assert s["interrupted"] and s["failed"] == 0


def test_seed_modes_stale_older_than_and_failure_threshold(renderd_daemon, tmp_path):
    d = renderd_daemon()
    bbox = "20,55,30,65"
    args = ["--layer", "shapes", "--zoom", "4-7", "--bbox", bbox, "--json"]
    first = summary_of(d.run("seed", *args).stdout)
    n = first["metatiles"]
    assert first["rendered"] == n == d.rendered()
    # --older-than a time before the renders skips them; after them, renders them again
    past = summary_of(d.run("seed", *args, "--older-than", "2001-01-01T00:00:00Z").stdout)
    assert (past["rendered"], past["skipped"]) == (0, n)
    time.sleep(1.1)  # index times are whole seconds
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    again = summary_of(d.run("seed", *args, "--older-than", now).stdout)
    assert again["rendered"] == n and d.rendered() == 2 * n
    # stale metatiles are rendered by a plain (--missing) seed
    assert d.run("expire", "--layer", "shapes", "--min-zoom", "4", input="7/69/37\n").returncode == 0
    stale = [idx.meta for idx in d.store().iter_indexes("shapes") if idx.stale]
    assert len(stale) == 4
    fresh = summary_of(d.run("seed", *args).stdout)
    assert (fresh["rendered"], fresh["skipped"]) == (4, n - 4)
    assert not any(idx.stale for idx in d.store().iter_indexes("shapes"))
    # failures: a configuration that believes the layer goes one zoom further
    # than the daemon's; the broker answers INVALID for zoom 15
    other = tmp_path / "other.toml"
    other.write_text(d.config.read_text().replace("maxzoom = 14", "maxzoom = 15"))
    cmd = ["seed", "-c", str(other), "--layer", "shapes", "--zoom", "15", "--bbox", "24.9,60.1,25.0,60.2",
           "--json", "-q"]
    import subprocess
    from tests.fixtures.daemon import RENDERD
    r = subprocess.run(RENDERD + cmd, capture_output=True, text=True, timeout=60)
    s = summary_of(r.stdout)
    assert s["failed"] == s["metatiles"] >= 2 and s["rendered"] == 0
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "more than --max-failures 0" in r.stderr
    r = subprocess.run(RENDERD + cmd + ["--max-failures", "100%"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(RENDERD + cmd + ["--max-failures", str(s["failed"] - 1)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1


def test_seed_stops_cleanly_when_the_daemon_shuts_down_and_continues_later(renderd_daemon):
    d = renderd_daemon()
    bbox = "5,45,45,70"
    args = ["--layer", "shapes", "--zoom", "0-9", "--bbox", bbox, "--json"]
    proc = d.spawn("seed", *args, "--concurrency", "2")
    deadline = time.monotonic() + 60
    while d.rendered() < 10:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    d.stop()  # SIGTERM: the broker answers "shutting down" to what it has not started
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("renderd-py: error: the daemon at tcp://127.0.0.1:")
    assert last.endswith("is shutting down; run the same command again when it is back")
    first = summary_of(out)
    assert first["failed"] == 0 and first["rendered"] >= 10 and first["remaining"] > 0
    assert first["daemon_gone"].endswith("is shutting down")
    # a new daemon on the same store: the seed continues, nothing is rendered twice
    d2 = renderd_daemon()
    r = d2.run("seed", *args, timeout=300)
    assert r.returncode == 0, r.stderr
    second = summary_of(r.stdout)
    assert second["skipped"] == first["rendered"] and second["failed"] == 0
    assert first["rendered"] + second["rendered"] == first["metatiles"] == 115
    assert d2.rendered() == second["rendered"]


def test_window_gives_up_on_a_broker_that_stopped_answering():
    """A real ROUTER that takes requests and never answers (a hung or
    vanished daemon): the window PINGs it after its liveness and gives up."""
    import zmq
    from renderd.client import Client, Window
    from renderd.tilemath import Meta
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    failed = []
    try:
        with Client(f"tcp://127.0.0.1:{port}") as c:
            w = Window(c, "x", p.BULK, 4, 1.0, lambda m, r: None, lambda m, why: failed.append(m))
            t0 = time.monotonic()
            for i in range(3):
                assert w.submit(Meta(5, 8 * i, 0, 8))
            assert w.drain(30)
            assert time.monotonic() - t0 < 5
        assert w.gone and "stopped answering" in w.gone and failed == []
        assert not w.submit(Meta(5, 0, 8, 8))
    finally:
        router.close(0)


def test_seed_retries_busy_answers_when_the_bulk_queue_is_full(renderd_daemon):
    d = renderd_daemon(queue_size=2)
    r = d.run("seed", "--layer", "shapes", "--zoom", "0-7", "--bbox", "5,45,45,70", "--concurrency", "12",
              "--json")
    assert r.returncode == 0, r.stderr
    s = summary_of(r.stdout)
    assert s["rendered"] == s["metatiles"] == d.rendered() and s["failed"] == 0
    assert s["busy_answers"] > 0 and d.status()["counters"]["busy"] == s["busy_answers"]
