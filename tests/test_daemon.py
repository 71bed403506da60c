"""``renderd-py serve`` end to end: real processes, real ZeroMQ sockets on
loopback, real stores; slow renders come from a real PostGIS query that
sleeps (tests/data/daemon_slow_style.xml)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mapnik
import pytest
import zmq

from renderd import protocol as p
from renderd.client import Client
from renderd.errors import BusyError, DaemonError
from renderd.store import open_store
from renderd.store.index import MetaIndex, content_hash
from renderd.tilemath import Meta, Tile
from renderd import config as _config
from tests.fixtures.servers import free_port, stop
from tests.fixtures.store import get_tile

DATA = Path(__file__).parent / "data"
RENDERD = [sys.executable, "-m", "renderd.cli.main"]


class Serve:
    """A `renderd-py serve` process with its own config in a temp dir."""

    def __init__(self, tmp: Path, layers: str, store: str = "", **daemon):
        self.tmp = tmp
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        for f in ("daemon_style.xml", "daemon_shapes.geojson", "daemon_slow_style.xml"):
            shutil.copy(DATA / f, tmp / f)
        d = {"broker": self.endpoint, "workers": 2, "heartbeat": 0.5, "liveness": 4, "log_level": "info"}
        d.update(daemon)
        lines = ["[daemon]"] + [f"{k} = {json.dumps(v)}" for k, v in d.items()]
        lines += ["[store]", store or f'kind = "disk"\npath = "{tmp / "cache"}"', layers]
        self.config = tmp / "renderd.toml"
        self.config.write_text("\n".join(lines))
        self.log = open(tmp / "serve.log", "w+")
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Serve":
        self.proc = subprocess.Popen(RENDERD + ["serve", "-c", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_workers(_config.load(self.config).daemon.processes)
        return self

    def client(self, timeout: float = 30) -> Client:
        return Client(self.endpoint, timeout)

    def status(self) -> dict:
        with self.client() as c:
            return c.status()

    def wait_workers(self, n: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.output()
                try:
                    st = c.status(timeout=1)
                    if st["workers"]["total"] >= n:
                        return st
                except Exception:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"{n} workers not ready:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (self.tmp / "serve.log").read_text()

    def stop(self) -> int:
        if self.proc:
            stop(self.proc, 30)
        self.log.close()
        return self.proc.returncode if self.proc else 0


FAST = """
[[layer]]
name = "shapes"
style = "daemon_style.xml"
minzoom = 0
maxzoom = 12
"""


def slow_layer(pg: dict, delay: float) -> str:
    return f"""
[[layer]]
name = "slow"
style = "daemon_slow_style.xml"
minzoom = 0
maxzoom = 12
params = {{ host = "{pg['host']}", port = "{pg['port']}", user = "{pg['user']}", dbname = "{pg['dbname']}", delay = "{delay}" }}
"""


@pytest.fixture
def serve(tmp_path):
    started = []

    def make(layers=FAST, start=True, **kw):
        s = Serve(tmp_path, layers, **kw)
        started.append(s)
        return s.start() if start else s

    yield make
    for s in started:
        s.stop()


def check_png(data: bytes) -> mapnik.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return mapnik.Image.from_string(data)


def test_render_through_the_daemon(serve, tmp_path):
    s = serve()
    with s.client() as c:
        reply = c.render("shapes", Tile(5, 10, 12))
    check_png(reply.tile)
    f = reply.fields()
    assert f["hash"] == content_hash(reply.tile) and f["ext"] == "png"
    store = open_store(_config.load(s.config).store)
    idx = store.get_index("shapes", Meta(5, 8, 8, 8))
    assert idx is not None and idx.tile_hash(10, 12) == f["hash"]
    assert get_tile(store, "shapes", Tile(5, 10, 12)) == (reply.tile, idx)
    # the whole metatile on request, and nothing for bad requests
    with s.client() as c:
        meta = c.render("shapes", Tile(5, 9, 9), flags=("meta",))
        assert MetaIndex.decode(meta.index).unique() == [content_hash(b) for b in meta.blobs]
        with pytest.raises(DaemonError, match="INVALID"):
            c.render("shapes", Tile(13, 0, 0))
        with pytest.raises(DaemonError, match="unknown layer"):
            c.render("nope", Tile(1, 0, 0))
    assert s.stop() == 0


def test_redis_store(serve, redis_url):
    s = serve(store=f'kind = "redis"\nurl = "{redis_url}"\nprefix = "t"')
    with s.client() as c:
        reply = c.render("shapes", Tile(3, 2, 3))
    store = open_store(_config.load(s.config).store)
    data, idx = get_tile(store, "shapes", Tile(3, 2, 3))
    assert data == reply.tile and idx.meta == Meta(3, 0, 0, 8)


def test_ipc_endpoint_and_clean_shutdown(serve, tmp_path):
    sock = tmp_path / "run" / "broker.sock"
    s = Serve(tmp_path, FAST)
    s.endpoint = f"ipc://{sock}"
    s.config.write_text(s.config.read_text().replace(f'"tcp://127.0.0.1:{s.port}"', f'"ipc://{sock}"'))
    s.start()
    with s.client() as c:
        assert c.render("shapes", Tile(2, 1, 1)).ok
    assert sock.exists()
    assert s.stop() == 0
    assert not sock.exists()


def test_concurrent_requests_for_one_metatile_render_once(serve, postgis_dsn):
    s = serve(slow_layer(postgis_dsn, 1.0), recent_seconds=0.0)
    ctx = zmq.Context.instance()
    socks = [ctx.socket(zmq.DEALER) for _ in range(20)]
    try:
        for sk in socks:
            sk.setsockopt(zmq.LINGER, 0)
            sk.connect(s.endpoint)
        sent = {}
        for i in range(200):
            sk = socks[i % len(socks)]
            t = Tile(10, 512 + i % 8, 384 + (i // 8) % 8)
            rid = str(i).encode()
            sk.send_multipart(p.RenderRequest(rid, "slow", t, p.MISSING, 30000).frames())
            sent[rid] = t
        got = {}
        poller = zmq.Poller()
        for sk in socks:
            poller.register(sk, zmq.POLLIN)
        deadline = time.monotonic() + 30
        while len(got) < 200 and time.monotonic() < deadline:
            for sk, _ in poller.poll(500):
                r = p.decode_reply(sk.recv_multipart())
                got[r.rid] = r
    finally:
        for sk in socks:
            sk.close(0)
    assert len(got) == 200
    assert all(r.ok and r.tile for r in got.values())
    by_tile = {}
    for rid, r in got.items():
        by_tile.setdefault(sent[rid], set()).add(r.fields()["hash"])
    assert all(len(h) == 1 for h in by_tile.values())
    st = s.status()
    assert st["counters"]["rendered"] == 1
    assert st["counters"]["coalesced"] == 199


def test_full_queue_busy_and_abandoned_jobs_not_rendered(serve, postgis_dsn):
    s = serve(slow_layer(postgis_dsn, 1.5), workers=1, reserved=0, queue_size=2, recent_seconds=0.0)
    with s.client() as c:
        first = p.RenderRequest(b"first", "slow", Tile(8, 0, 0), p.MISSING, 30000)
        c.send(first)
        time.sleep(0.3)  # let it start
        # two queued callers that give up after 300 ms
        for i in (1, 2):
            c.send(p.RenderRequest(f"q{i}".encode(), "slow", Tile(8, 8 * i, 0), p.MISSING, 300))
        t0 = time.monotonic()
        with pytest.raises(BusyError):
            c.render("slow", Tile(8, 64, 64), timeout=5)
        assert time.monotonic() - t0 < 1.0  # answered at once, not after a render
        replies = {}
        while b"first" not in replies:
            r = c.recv(10)
            assert r is not None
            replies[r.rid] = r
        assert replies[b"first"].ok
    time.sleep(2.0)
    st = s.status()
    assert st["counters"]["rendered"] == 1
    assert st["counters"]["dropped"] == 2
    store = open_store(_config.load(s.config).store)
    assert store.get_index("slow", Meta(8, 8, 0, 8)) is None


def test_worker_killed_mid_render_is_replaced_and_job_requeued(serve, postgis_dsn):
    s = serve(slow_layer(postgis_dsn, 1.5), workers=2)
    with s.client() as c:
        rid = c.send(p.RenderRequest(b"", "slow", Tile(9, 100, 100), p.MISSING, 60000))
        busy = None
        deadline = time.monotonic() + 10
        while busy is None and time.monotonic() < deadline:
            busy = next((w["pid"] for w in c.status()["worker_list"] if w["busy"]), None)
            time.sleep(0.05)
        assert busy is not None
        os.kill(busy, signal.SIGKILL)
        reply = None
        while reply is None or reply.rid != rid:
            reply = c.recv(20)
            assert reply is not None, s.output()
        assert reply.ok
    st = s.wait_workers(2)
    assert busy not in [w["pid"] for w in st["worker_list"]]
    store = open_store(_config.load(s.config).store)
    idx = store.get_index("slow", Meta(9, 96, 96, 8))
    assert store.get_metatile("slow", Meta(9, 96, 96, 8))[1].keys() == set(idx.unique())
    assert "queued again" in s.output()


def test_render_timeout_kills_and_second_kill_fails_the_metatile(serve, postgis_dsn):
    s = serve(slow_layer(postgis_dsn, 30), workers=2, render_timeout=1.0)
    with s.client(timeout=30) as c:
        t0 = time.monotonic()
        with pytest.raises(DaemonError, match="killed 2 workers"):
            c.render("slow", Tile(6, 0, 0))
        assert time.monotonic() - t0 < 20
    s.wait_workers(2)  # both replaced


def test_workers_are_recycled(serve):
    s = serve(max_jobs=2, workers=1)
    pids = set()
    with s.client() as c:
        for i in range(5):
            assert c.render("shapes", Tile(6, 8 * i, 0)).ok
            pids |= {w["pid"] for w in c.status()["worker_list"]}
    assert len(pids) >= 2


def test_hup_reloads_styles(serve, tmp_path):
    s = serve(workers=1, reserved=0)
    with s.client() as c:
        before = c.render("shapes", Tile(0, 0, 0)).tile
    style = tmp_path / "daemon_style.xml"
    style.write_text(style.read_text().replace("#a6cee3", "#ff0000"))
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = s.status()
        if [w["generation"] for w in st["worker_list"]] == [1]:
            break
        time.sleep(0.2)
    with s.client() as c:
        after = c.render("shapes", Tile(0, 0, 0), flags=("force",)).tile
    assert after != before
    assert s.proc.poll() is None


def test_broken_style_stops_startup_without_restart_loop(serve, tmp_path):
    s = serve(start=False)
    (tmp_path / "daemon_style.xml").write_text("<Map><Layer>")
    s.start(wait=False)
    code = s.proc.wait(60)
    out = s.output()
    assert code == 3
    assert "daemon_style.xml" in out
    # each process of the first start says it once, and none is started again
    assert out.count("renderd-py worker: error") <= _config.load(s.config).daemon.processes


def test_bad_config_one_line_exit_2(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\nworkers = "many"\n')
    r = subprocess.run(RENDERD + ["serve", "-c", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "daemon.workers" in r.stderr
    cfg.write_text('[[layer]]\nname = "x"\nstyle = "missing.xml"\n')
    r = subprocess.run(RENDERD + ["serve", "-c", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "missing.xml" in r.stderr and r.stderr.strip().count("\n") == 0
    cfg.write_text('[[layer]]\nname = "x"\nstyle = "s.xml"\nminzoom = 9\nmaxzoom = 2\n')
    (tmp_path / "s.xml").write_text("<Map/>")
    r = subprocess.run(RENDERD + ["serve", "-c", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "minzoom" in r.stderr


def test_garbage_does_not_kill_the_broker(serve):
    s = serve(workers=1)
    ctx = zmq.Context.instance()
    junk = ctx.socket(zmq.DEALER)
    junk.setsockopt(zmq.LINGER, 0)
    junk.connect(s.endpoint)
    for frames in ([b"\x00" * 10], [b"RPY2", b"RENDER"], [b"RPY1"], [b"RPY1", b"RENDER", b"1"],
                   [b"RPY1", b"RENDER", b"1", b"shapes", b"1/1"], [b"RPW1", b"DONE", b"77", b"xx"],
                   [b"RPW1", b"READY", b"{not json"], [os.urandom(5000)] * 3):
        junk.send_multipart(frames)
    time.sleep(0.3)
    junk.close(0)
    # and raw bytes on the TCP port that are not ZMTP at all
    for payload in (b"GET / HTTP/1.0\r\n\r\n", os.urandom(300), b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f"):
        with socket.create_connection(("127.0.0.1", s.port), timeout=2) as raw:
            raw.sendall(payload)
    time.sleep(0.3)
    with s.client() as c:
        assert c.ping()
        assert c.render("shapes", Tile(4, 3, 3)).ok
    assert s.status()["counters"]["bad_messages"] >= 5


def test_remote_workers_over_tcp(serve, tmp_path):
    s = serve(workers=0)
    remote = subprocess.Popen(RENDERD + ["worker", "-c", str(s.config), "--connect", s.endpoint,
                                         "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        s.wait_workers(1)
        with s.client() as c:
            assert c.render("shapes", Tile(3, 7, 7)).ok
    finally:
        remote.send_signal(signal.SIGTERM)
        remote.wait(30)
    assert remote.returncode == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_end_when_the_daemon_is_killed(serve):
    """No orphans: SIGKILL of `serve` leaves no worker process after 10 s."""
    s = serve()
    pids = [w["pid"] for w in s.status()["worker_list"]]
    assert len(pids) >= 2 and all(_alive(pid) for pid in pids)
    s.proc.kill()
    s.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "workers outlived their daemon"


def test_workers_of_a_killed_worker_pool_end_too(serve):
    s = serve(workers=0)
    pool = subprocess.Popen(RENDERD + ["worker", "-c", str(s.config), "--connect", s.endpoint,
                                       "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        st = s.wait_workers(2)
        pids = [w["pid"] for w in st["worker_list"]]
        pool.kill()
        pool.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids)
    finally:
        if pool.poll() is None:
            pool.kill()


def test_a_frozen_daemon_keeps_its_healthy_workers(serve, postgis_dsn):
    """SIGSTOP the daemon longer than heartbeat x liveness (2 s here): the
    workers reconnect under new identities meanwhile. After SIGCONT the
    stale records are dropped without killing anyone, and the metatile that
    was rendering is answered, not failed as if it had killed two workers."""
    s = serve(slow_layer(postgis_dsn, 2.0), workers=2, recent_seconds=0.0)
    before = {w["pid"] for w in s.status()["worker_list"]}
    with s.client() as c:
        rid = c.send(p.RenderRequest(b"", "slow", Tile(9, 200, 200), p.MISSING, 60000))
        deadline = time.monotonic() + 10
        while not any(w["busy"] for w in c.status()["worker_list"]):
            assert time.monotonic() < deadline, s.output()
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(4.0)
        finally:
            s.proc.send_signal(signal.SIGCONT)
        reply = c.recv(30)
        assert reply is not None and reply.rid == rid, s.output()
        assert reply.ok, reply.info
        time.sleep(3.0)  # past another liveness period: nothing is killed late either
        st = c.status()
    assert {w["pid"] for w in st["worker_list"]} == before
    assert st["workers"]["total"] == len(before) == 3  # 2 workers, 1 reserved
    assert st["counters"].get("failed", 0) == 0
    out = s.output()
    assert "killing worker" not in out and "killed" not in out


def main_thread_nice(pid: int) -> tuple[int, list[int]]:
    """(nice of the main thread, nice of the others)."""
    nice = {int(t.name): int((t / "stat").read_text().rsplit(")", 1)[1].split()[16])
            for t in Path(f"/proc/{pid}/task").iterdir()}
    return nice.pop(pid), sorted(nice.values())


def test_reserved_workers_render_nice_gap_above_the_others(serve):
    s = serve(workers=1, reserved=1, nice_gap=7)
    st = s.status()
    roles = {w["role"]: w["pid"] for w in st["worker_list"]}
    assert set(roles) == {"any", "interactive"}
    base = os.getpriority(os.PRIO_PROCESS, 0)  # ours, which the daemon started at
    daemon_nice, daemon_threads = main_thread_nice(s.proc.pid)
    reserved_nice, reserved_io = main_thread_nice(roles["interactive"])
    seeder_nice, seeder_io = main_thread_nice(roles["any"])
    assert seeder_nice - reserved_nice == 7
    # raised where allowed (we are root here): the broker with them; else the others lowered
    raised = os.geteuid() == 0
    assert (reserved_nice, seeder_nice) == ((base - 7, base) if raised else (base, base + 7))
    assert daemon_nice == reserved_nice and set(daemon_threads) == {daemon_nice}
    # the threads that answer heartbeats keep the pool's priority
    assert set(reserved_io) == set(seeder_io) == {daemon_nice}
    with s.client() as c:
        assert c.render("shapes", Tile(4, 3, 3)).ok
        assert c.render("shapes", Tile(4, 8, 8), priority=p.BULK).ok


@pytest.mark.parametrize("gap, allowed, base, nice", [
    (10, True, 0, (-10, 0)), (10, False, 0, (0, 10)), (10, False, 15, (15, 19)), (0, True, 0, (0, 0)),
    (10, True, -15, (-15, -5)),
])
def test_render_nice_raises_the_reserved_or_lowers_the_others(monkeypatch, gap, allowed, base, nice):
    from renderd import daemon
    monkeypatch.setattr(os, "getpriority", lambda which, who: base)
    assert daemon.render_nice(gap, may=lambda v: allowed) == {"interactive": nice[0], "any": nice[1]}
