"""The Lua tile handler (lua/renderd/front.lua) in a real nginx, with a real
disk store directory or redis-server, and a pyzmq ROUTER playing the broker
(docs/protocol.md)."""

from __future__ import annotations

import concurrent.futures
import json
import http.client
import re
import threading
import time
import hashlib
import os
import signal

import pytest
import zmq

from renderd.store.index import EMPTY, MetaIndex, content_hash
from renderd.tilemath import Meta, Tile, meta_tiles, metatile_of
from renderd.store.disk import DiskStore
from renderd import config as _config
from renderd.nginx import front_options
from tests.fixtures.servers import RedisServer, free_port

LAYER = {"name": "world", "minzoom": 0, "maxzoom": 12, "metatile": 8, "ext": "png",
         "content_type": "image/png", "cache_control": "public, max-age=3600", "tile_size": 256,
         "keys": []}
RENDERED = 1763745600
FRONT_DEFAULTS = front_options(_config.parse({}).http)


def tile_bytes(layer: str, z: int, x: int, y: int) -> bytes:
    """Synthetic tile contents: every third column is 'ocean' (one shared blob)."""
    if x % 3 == 0:
        return b"\x89PNG ocean " + layer.encode() + b" %d" % z
    return b"\x89PNG " + f"{layer}/{z}/{x}/{y} ".encode() + hashlib.sha256(f"{x},{y}".encode()).digest() * 20


def make_meta(layer: str, meta: Meta, stale: bool = False, empty: set | None = None,
              rendered: int = RENDERED) -> tuple[MetaIndex, dict[str, bytes]]:
    hashes, blobs = [], {}
    for t in meta_tiles(meta):
        if empty and (t.x, t.y) in empty:
            hashes.append(EMPTY)
            continue
        data = tile_bytes(layer, t.z, t.x, t.y)
        h = content_hash(data)
        hashes.append(h)
        blobs[h] = data
    return MetaIndex(meta, tuple(hashes), rendered, rendered - 100, "png", stale), blobs


class FakeBroker:
    """A ROUTER speaking protocol v1 to clients. ``mode``: ok, busy, fail,
    silent. ``delay``: seconds before answering a RENDER. In ``ok`` mode the
    metatile is written to ``store`` (if any), as a worker would."""

    def __init__(self, endpoint: str | None = None, store=None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
        self.sock.bind(self.endpoint)
        self.store = store
        self.mode = "ok"
        self.delay = 0.0
        #: what CATALOG questions get: a function of the question (JSON),
        #: a fixed answer, b"STATUS info" for an error reply, None for silence
        self.catalog = lambda q: {"layer": q["layer"], "keys": ["year", "month"],
                                  "values": [["2024", "07"], ["2024", "08"]], "version": 1}
        self.messages: list[list[bytes]] = []
        self.pending: list[tuple[float, list[bytes]]] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def renders(self) -> list[list[bytes]]:
        with self.lock:
            return [m for m in self.messages if m[1:2] == [b"RENDER"]]

    def wait_renders(self, n: int, timeout: float = 5.0) -> list[list[bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.renders()) < n:
            time.sleep(0.02)
        return self.renders()

    def run(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stopping:
            if poller.poll(10):
                ident, *frames = self.sock.recv_multipart()
                with self.lock:
                    self.messages.append(frames)
                self.handle(ident, frames)
            now = time.monotonic()
            due = [p for p in self.pending if p[0] <= now]
            self.pending = [p for p in self.pending if p[0] > now]
            for _, msg, before in due:
                if before:
                    before()
                self.sock.send_multipart(msg)

    def handle(self, ident: bytes, frames: list[bytes]):
        if len(frames) < 3 or frames[0] != b"RPY1":
            return
        cmd, rid = frames[1], frames[2]
        if cmd == b"PING":
            self.sock.send_multipart([ident, b"RPY1", b"PONG", rid])
        elif cmd == b"STATUS":
            body = (b'{"queues":{"missing":2,"stale":1,"bulk":0,"expiry":0},"running":1,'
                    b'"workers":{"idle":1,"busy":1,"total":2},"counters":{"rendered":7,"busy":1},'
                    b'"render_seconds":{"missing":1.5},"render_count":{"missing":3},"worker_list":[]}')
            self.sock.send_multipart([ident, b"RPY1", b"OK", rid, body])
        elif cmd == b"CATALOG":
            import json as _json
            q = _json.loads(frames[3])
            with self.lock:
                answer = self.catalog(q) if callable(self.catalog) else self.catalog
            if answer is None:
                return
            if isinstance(answer, bytes):       # an error reply: status and info
                status, _, info = answer.partition(b" ")
                self.sock.send_multipart([ident, b"RPY1", status, rid, info])
            else:
                self.sock.send_multipart([ident, b"RPY1", b"OK", rid, _json.dumps(answer).encode()])
        elif cmd == b"RENDER":
            reply, before = self.render_reply(frames)
            if reply is not None:
                self.pending.append((time.monotonic() + self.delay, [ident, *reply], before))

    def render_reply(self, frames):
        rid, layer, tile = frames[2], frames[3].decode(), frames[4].decode()
        if self.mode == "silent":
            return None, None
        if self.mode == "busy":
            return [b"RPY1", b"BUSY", rid, b"queue full"], None
        if self.mode == "fail":
            return [b"RPY1", b"FAIL", rid, b"style error"], None
        z, x, y = (int(v) for v in tile.split("/"))
        meta = metatile_of(z, x, y, 8)
        idx, blobs = make_meta(layer, meta, rendered=int(time.time()))
        store = self.store

        def write():  # as a worker does, just before the reply
            if store is not None:
                store.put_metatile(layer, idx, blobs)
        h = idx.tile_hash(x, y)
        info = f"{h or EMPTY} {idx.rendered} {idx.data} 0 png".encode()
        out = [b"RPY1", b"OK", rid, info, blobs.get(h, b"")]
        if b"meta" in frames[7].split(b","):
            out.append(idx.encode())
            out.extend(blobs[d] for d in idx.unique())
        return out, write

    def close(self):
        if self.stopping:
            return
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()


# --- HTTP helpers ----------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body, elapsed):
        self.status, self.headers, self.body, self.elapsed = status, headers, body, elapsed

    def h(self, name):
        return self.headers.get(name.lower())


def request(port: int, path: str, method: str = "GET", headers: dict | None = None,
            timeout: float = 30) -> Resp:
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body, time.monotonic() - t0)
    finally:
        c.close()


def tile_path(z, x, y, layer="world", ext="png"):
    return f"/tiles/{layer}/{z}/{x}/{y}.{ext}"


def runtime(store: dict, broker: str, **kw) -> dict:
    """A runtime JSON as nginx-conf writes it: the configuration's defaults
    for the front's knobs, then the test's own values."""
    if store.get("kind") == "redis":
        from renderd.store.redis_scripts import META_SCRIPT
        store = {"meta_script": META_SCRIPT, **store}
    rt = {**FRONT_DEFAULTS, "broker": broker, "timeout": 3, "store": store, "layers": [LAYER],
          "dicts": {"tiles": "rpy_tiles", "locks": "rpy_locks", "metrics": "rpy_metrics"}}
    rt.update(kw)
    # a layer without a cors of its own gets [http]'s, as nginx-conf writes it
    rt["layers"] = [dict(lyr, cors=lyr.get("cors", rt["cors"])) for lyr in rt["layers"]]
    return rt


def assert_tile(r: Resp, z, x, y, xcache: str, layer="world"):
    data = tile_bytes(layer, z, x, y)
    assert r.status == 200, (r.status, r.body[:200], r.headers)
    assert r.body == data
    assert r.h("content-type") == "image/png"
    assert r.h("etag") == f'"{content_hash(data)}"'
    assert r.h("cache-control") == "public, max-age=3600"
    assert r.h("x-cache") == xcache
    assert r.h("last-modified")


# --- fixtures ----------------------------------------------------------------------

@pytest.fixture
def broker():
    b = FakeBroker()
    yield b
    b.close()


@pytest.fixture
def disk_store(tmp_path):
    from renderd.store.disk import DiskStore
    return DiskStore(tmp_path / "store")


@pytest.fixture
def redis_store(redis_url):
    from renderd.store.redis import RedisStore
    s = RedisStore(redis_url, prefix="rpy")
    yield s
    s.close()


def redis_store_cfg(url: str) -> dict:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return {"kind": "redis", "host": "127.0.0.1", "port": port, "db": 0, "password": None,
            "prefix": "rpy", "socket": None}


@pytest.fixture
def cluster_store(redis_cluster_url):
    from renderd.store.redis_cluster import RedisClusterStore
    s = RedisClusterStore(redis_cluster_url, prefix="rpy")
    yield s
    s.close()


@pytest.fixture
def cluster_front(nginx_factory, cluster_store, redis_cluster_url, broker):
    from renderd.nginx.addresses import redis_settings
    broker.store = cluster_store
    return nginx_factory(runtime(redis_settings(redis_cluster_url, "rpy"), broker.endpoint))


@pytest.fixture
def disk_front(nginx_factory, disk_store, broker):
    broker.store = disk_store
    return nginx_factory(runtime({"kind": "disk", "path": disk_store.path}, broker.endpoint))


@pytest.fixture
def redis_front(nginx_factory, redis_store, redis_url, broker):
    broker.store = redis_store
    return nginx_factory(runtime(redis_store_cfg(redis_url), broker.endpoint))


@pytest.fixture(params=["disk", "redis", "cluster"])
def front(request):
    """(nginx, store, broker) for each store kind."""
    ng = request.getfixturevalue(f"{request.param}_front")
    store = request.getfixturevalue(f"{request.param}_store")
    return ng, store, request.getfixturevalue("broker")


# --- the X-Cache paths ------------------------------------------------------------------

def wait_xcache(port, path, want, timeout=3.0, method="GET") -> Resp:
    deadline = time.monotonic() + timeout
    while True:
        r = request(port, path, method=method)
        if r.h("x-cache") == want or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_store_then_hit(front):
    ng, store, broker = front
    meta = Meta(5, 8, 16, 8)
    store.put_metatile("world", *make_meta("world", meta))
    r = request(ng.port, tile_path(5, 9, 17))
    assert_tile(r, 5, 9, 17, "STORE")
    assert r.h("last-modified") == "Fri, 21 Nov 2025 17:20:00 GMT"
    # the whole metatile went into the hot cache (disk: right after the response)
    r = wait_xcache(ng.port, tile_path(5, 15, 23), "HIT")
    assert_tile(r, 5, 15, 23, "HIT")
    assert_tile(request(ng.port, tile_path(5, 9, 17)), 5, 9, 17, "HIT")
    assert broker.renders() == []


def test_large_tiles_whole_from_store_and_hot_cache(front):
    """Tiles far larger than a socket read (hundreds of KB, as raster tiles
    can be) come back whole from the store and from the hot-cache fill."""
    ng, store, broker = front
    meta = Meta(6, 40, 8, 8)
    idx, blobs = make_meta("world", meta)
    big = {}
    for t in list(meta_tiles(meta))[1:6]:
        data = b"\x89PNG big " + os.urandom(150_000 + 7 * t.x + t.y)
        big[(t.x, t.y)] = data
    hashes = list(idx.hashes)
    for (x, y), data in big.items():
        h = content_hash(data)
        hashes[(x - meta.x0) * 8 + (y - meta.y0)] = h
        blobs[h] = data
    idx = MetaIndex(meta, tuple(hashes), idx.rendered, idx.data, "png", False)
    blobs = {h: b for h, b in blobs.items() if h in set(hashes)}
    store.put_metatile("world", idx, blobs)
    (x, y), data = next(iter(big.items()))
    r = request(ng.port, tile_path(6, x, y))
    assert (r.status, r.h("x-cache"), r.body == data) == (200, "STORE", True)
    for (x, y), data in list(big.items())[1:]:
        r = wait_xcache(ng.port, tile_path(6, x, y), "HIT")
        assert (r.status, r.h("x-cache"), r.body == data) == (200, "HIT", True)
    assert broker.renders() == []


def test_render_then_hit(front):
    ng, store, broker = front
    r = request(ng.port, tile_path(7, 100, 50))
    assert_tile(r, 7, 100, 50, "RENDER")
    (msg,) = broker.renders()
    assert msg[0:2] == [b"RPY1", b"RENDER"]
    assert msg[3:6] == [b"world", b"7/100/50", b"0"]
    assert 2000 < int(msg[6]) <= 3100
    # disk: the whole metatile comes with the reply; Redis: it is read back
    # from the store for the hot cache, after the answer
    assert msg[7] == (b"meta" if isinstance(store, DiskStore) else b"")
    for x, y in [(96, 48), (103, 55), (100, 51)]:
        # (the hot cache is filled just after the RENDER answer)
        assert_tile(wait_xcache(ng.port, tile_path(7, x, y), "HIT"), 7, x, y, "HIT")
    assert len(broker.renders()) == 1


def test_small_zoom_metatiles(front):
    ng, store, broker = front
    for z, x, y in [(0, 0, 0), (1, 1, 0), (2, 3, 3)]:
        assert_tile(request(ng.port, tile_path(z, x, y)), z, x, y, "RENDER")
    assert_tile(wait_xcache(ng.port, tile_path(2, 0, 1), "HIT"), 2, 0, 1, "HIT")
    assert len(broker.renders()) == 3


def test_stale_served_and_rerender_queued(front):
    ng, store, broker = front
    meta = Meta(6, 0, 8, 8)
    idx, blobs = make_meta("world", meta, stale=True)
    store.put_metatile("world", idx, blobs)
    t0 = time.monotonic()
    r = request(ng.port, tile_path(6, 1, 9))
    assert_tile(r, 6, 1, 9, "STALE")
    assert r.elapsed < 1.0
    (msg,) = broker.wait_renders(1)
    assert msg[3:6] == [b"world", b"6/1/9", b"1"]
    # (force: not answered from the broker's memory of the last render)
    assert msg[7] == (b"meta,force" if isinstance(store, DiskStore) else b"force")
    # the background re-render refreshed the hot cache
    r = wait_xcache(ng.port, tile_path(6, 2, 10), "HIT")
    assert_tile(r, 6, 2, 10, "HIT")
    assert time.monotonic() - t0 < 5
    assert len(broker.renders()) == 1


def test_stale_rerender_once_per_metatile(front):
    ng, store, broker = front
    broker.delay = 1.0
    meta = Meta(6, 8, 8, 8)
    store.put_metatile("world", *make_meta("world", meta, stale=True))
    for x in range(8, 16):
        r = request(ng.port, tile_path(6, x, 8))
        assert r.h("x-cache") == "STALE" and r.elapsed < 0.9
    time.sleep(1.5)
    assert len(broker.renders()) == 1


def test_missing_pool_blob_rendered_again(disk_front, disk_store, broker):
    ng = disk_front
    meta = Meta(5, 0, 8, 8)
    idx, blobs = make_meta("world", meta)
    disk_store.put_metatile("world", idx, blobs)
    # the collector removed the ocean tile's pool file between our read of
    # the pack and the open() (column 3 is ocean, a tile the pool holds)
    os.unlink(disk_store.pool_path(idx.tile_hash(3, 9)))
    r = request(ng.port, tile_path(5, 3, 9))
    assert_tile(r, 5, 3, 9, "RENDER")
    assert len(broker.renders()) == 1
    assert not ng.errors()
    assert ng.log_text().count("is missing") == 1


def test_corrupt_pack_rendered_again(disk_front, disk_store, broker):
    ng = disk_front
    ng.expect_errors = True
    meta = Meta(5, 8, 0, 8)
    idx, blobs = make_meta("world", meta)
    disk_store.put_metatile("world", idx, blobs)
    path = disk_store.pack_path("world", meta)
    with open(path, "r+b") as f:  # the last tile kept in the pack, 14/7, now ends after the file
        f.truncate(os.path.getsize(path) - 1)
    record = idx.unique().index(idx.tile_hash(14, 7)) + 1
    assert record == len(idx.unique())
    r = request(ng.port, tile_path(5, 14, 7))
    assert_tile(r, 5, 14, 7, "RENDER")
    assert len(broker.renders()) == 1
    (line,) = ng.errors()
    assert "disk pack world/5/1/0: location" in line
    assert f"of record {record} is outside the pack's tiles" in line
    assert_tile(wait_xcache(ng.port, tile_path(5, 9, 1), "HIT"), 5, 9, 1, "HIT")


def test_pack_of_the_earlier_format_rendered_again(disk_front, disk_store, broker):
    """An ASCII pack (index, then 20-byte locations) is a miss, with one
    warning however many there are, and no store error."""
    ng = disk_front
    metas = [Meta(5, 16, 0, 8), Meta(5, 24, 0, 8)]
    for meta in metas:
        idx, _ = make_meta("world", meta)
        path = disk_store.pack_path("world", meta)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(idx.encode() + b"0000000000 00000000\n" * 64)
    for meta in metas:
        assert_tile(request(ng.port, tile_path(5, meta.x0 + 1, 2)), 5, meta.x0 + 1, 2, "RENDER")
    assert len(broker.renders()) == 2
    assert not ng.errors()
    assert ng.log_text().count("of an earlier format (RPYI1); such packs count as absent") == 1
    import urllib.request
    text = urllib.request.urlopen(ng.metrics_url, timeout=10).read().decode()
    assert not re.search(r"renderd_store_errors_total [1-9]", text)
    # the render replaced it: read from the new pack
    assert_tile(wait_xcache(ng.port, tile_path(5, 17, 3), "HIT"), 5, 17, 3, "HIT")


def test_empty_tile_is_404(front):
    ng, store, broker = front
    meta = Meta(5, 0, 0, 8)
    store.put_metatile("world", *make_meta("world", meta, empty={(1, 1)}))
    r = request(ng.port, tile_path(5, 1, 1))
    assert r.status == 404 and r.h("x-cache") == "STORE" and r.body == b"no tile\n"
    assert r.h("cache-control") == "public, max-age=3600"
    r = request(ng.port, tile_path(5, 1, 2))
    assert_tile(r, 5, 1, 2, r.h("x-cache"))
    assert r.h("x-cache") in ("STORE", "HIT")
    r = wait_xcache(ng.port, tile_path(5, 1, 1), "HIT", method="HEAD")
    assert r.status == 404 and r.body == b"" and r.h("content-length") == "8"


# --- validators and HEAD --------------------------------------------------------

@pytest.mark.parametrize("kind", ["STORE", "HIT", "RENDER"])
def test_if_none_match_304(front, kind):
    ng, store, broker = front
    z, x, y = 8, 40, 41
    if kind != "RENDER":
        store.put_metatile("world", *make_meta("world", metatile_of(z, x, y)))
    if kind == "HIT":
        wait_xcache(ng.port, tile_path(z, x, y), "HIT")
    etag = f'"{content_hash(tile_bytes("world", z, x, y))}"'
    r = request(ng.port, tile_path(z, x, y), headers={"If-None-Match": etag})
    assert r.status == 304, (r.status, r.headers)
    assert r.body == b""
    assert r.h("etag") == etag and r.h("x-cache") == kind
    assert r.h("cache-control") == "public, max-age=3600"
    r = request(ng.port, tile_path(z, x, y), headers={"If-None-Match": '"0123"'})
    assert r.status == 200 and r.body == tile_bytes("world", z, x, y)


def test_if_modified_since(front):
    ng, store, broker = front
    store.put_metatile("world", *make_meta("world", Meta(5, 0, 0, 8)))
    r = request(ng.port, tile_path(5, 2, 2), headers={"If-Modified-Since": "Fri, 21 Nov 2025 17:20:00 GMT"})
    assert r.status == 304
    r = request(ng.port, tile_path(5, 2, 2), headers={"If-Modified-Since": "Fri, 21 Nov 2025 17:19:59 GMT"})
    assert r.status == 200


@pytest.mark.parametrize("kind", ["STORE", "HIT"])
def test_head(front, kind):
    ng, store, broker = front
    z, x, y = 9, 100, 200
    store.put_metatile("world", *make_meta("world", metatile_of(z, x, y)))
    if kind == "HIT":
        wait_xcache(ng.port, tile_path(z, x, y), "HIT")
    r = request(ng.port, tile_path(z, x, y), method="HEAD")
    data = tile_bytes("world", z, x, y)
    assert r.status == 200 and r.body == b""
    assert r.h("content-length") == str(len(data))
    assert r.h("content-type") == "image/png"
    assert r.h("etag") == f'"{content_hash(data)}"'
    assert r.h("x-cache") == kind


# --- invalid input --------------------------------------------------------------

INVALID = [
    ("/tiles/world/-1/0/0.png", 400),
    ("/tiles/world/1/-1/0.png", 400),
    ("/tiles/world/1/0/-1.png", 400),
    ("/tiles/world/1/0/99999999999.png", 400),
    ("/tiles/world/123/0/0.png", 400),
    ("/tiles/world/1/" + "9" * 40 + "/0.png", 400),
    ("/tiles/world/a/0/0.png", 400),
    ("/tiles/world/1/0x1/0.png", 400),
    ("/tiles/world/1/1.5/0.png", 400),
    ("/tiles/world/1/0/0", 400),
    ("/tiles/world/1/0/0.png/", 400),
    ("/tiles/world/1/0/0/0.png", 400),
    ("/tiles/world//1/0/0.png", 400),
    ("/tiles/world/1/0/%30.png", 400),
    ("/tiles/world/1/0/0.png%00", 400),
    ("/tiles/world/1/0/0%00.png", 400),
    ("/tiles/world/1/../1/0/0.png", 400),
    ("/tiles/world/1/0/..%2f..%2f0.png", 400),
    ("/tiles/..%2f..%2fetc/1/0/0.png", 400),
    ("/tiles/wor ld/1/0/0.png", 400),
    ("/tiles/" + "a" * 300 + "/1/0/0.png", 400),
    ("/tiles/world/1/0/0.png?" + "x" * 3000, 400),
    ("/tiles/world/1/0/0." + "p" * 300, 400),
    ("/tiles/world/1/0/0." + "p" * 20, 400),
    ("/tiles/nope/1/0/0.png", 404),
    ("/tiles/world/13/0/0.png", 404),
    ("/tiles/world/1/2/0.png", 404),
    ("/tiles/world/1/0/2.png", 404),
    ("/tiles/world/0/1/0.png", 404),
    ("/tiles/world/12/4096/0.png", 404),
    ("/tiles/world/12/0/4096.png", 404),
    ("/tiles/world/1/0/0.jpg", 404),
    ("/tiles/world/1/0/0.PNG", 400),
]


def raw_request(port: int, line: bytes) -> tuple[int, bytes]:
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def test_invalid_requests(front, redis_url):
    import redis
    ng, store, broker = front
    r = redis.Redis.from_url(redis_url)
    before = r.info("commandstats")
    for p, want in INVALID:
        status, data = raw_request(ng.port, b"GET " + p.encode() + b" HTTP/1.1")
        assert status == want, (p, status, data[:300])
        if b"\r\n\r\n" in data and status in (400, 404) and b"X-Cache" in data:
            raise AssertionError(f"{p}: validation failure carries X-Cache")
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        res = request(ng.port, tile_path(1, 0, 0), method=method)
        assert res.status == 405 and res.h("allow") == "GET, HEAD", method
    # absolute-form request target and a cache-busting query string are fine
    for line in (b"GET http://x/tiles/world/1/2/0.png HTTP/1.1", b"GET /tiles/world/1/2/0.png?v=3 HTTP/1.1"):
        status, _ = raw_request(ng.port, line)
        assert status == 404
    # a request that nginx itself refuses still never reaches anything
    status, _ = raw_request(ng.port, b"GET /tiles/world/1/0/0.png\x00 HTTP/1.1")
    assert status == 400
    time.sleep(0.2)
    assert broker.messages == []
    after = r.info("commandstats")
    for cmd in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_get"):
        assert before.get(cmd) == after.get(cmd), cmd
    r.close()


# --- failures ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["busy", "fail"])
def test_busy_or_fail_is_503(front, mode):
    ng, store, broker = front
    broker.mode = mode
    ng.expect_errors = True
    for _ in range(3):
        r = request(ng.port, tile_path(10, 500, 500))
        assert r.status == 503 and r.body.startswith(b"tile 10/500/500 unavailable")
        assert r.h("retry-after") == "5"
        assert r.elapsed < 1.0
    assert len(broker.renders()) == 3
    # FAIL is an error of the daemon, BUSY only a warning; either is logged once
    assert len(ng.errors()) == (1 if mode == "fail" else 0), ng.errors()
    assert ng.log_text().count("render of world/10/500/500 failed") == 1


def test_silent_broker_times_out(front):
    ng, store, broker = front
    broker.mode = "silent"
    r = request(ng.port, tile_path(10, 500, 500))
    assert r.status == 503 and r.h("retry-after")
    assert 2.5 < r.elapsed < 4.0


def test_expired_hot_copy_served_when_render_fails(nginx_factory, tmp_path, broker):
    # no store content at all: the tile only ever lived in the hot cache
    ng = nginx_factory(runtime({"kind": "disk", "path": str(tmp_path / "empty")}, broker.endpoint,
                               hot_ttl=1))
    assert_tile(request(ng.port, tile_path(4, 3, 3)), 4, 3, 3, "RENDER")
    time.sleep(1.5)
    broker.mode = "busy"
    r = request(ng.port, tile_path(4, 3, 3))
    assert_tile(r, 4, 3, 3, "STALE")


# --- concurrency -------------------------------------------------------------------

def _concurrent(ng, broker, n=500):
    broker.delay = 1.0
    meta = Meta(12, 1000, 2000, 8)
    tiles = [(12, t.x, t.y) for t in meta_tiles(meta)]
    work = [tiles[i % len(tiles)] for i in range(n)]

    def one(t):
        return t, request(ng.port, tile_path(*t), timeout=20)

    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, work))
    for (z, x, y), r in results:
        assert r.status == 200, (z, x, y, r.status, r.body[:200])
        assert r.body == tile_bytes("world", z, x, y)
        # (STORE: came after the answer, before the hot cache was filled)
        assert r.h("x-cache") in ("RENDER", "HIT", "STORE")
    time.sleep(0.3)
    assert len(broker.renders()) == 1
    return results


@pytest.mark.slow
def test_concurrent_misses_one_render(front):
    ng, store, broker = front
    results = _concurrent(ng, broker)
    assert sum(1 for _, r in results if r.h("x-cache") == "RENDER") >= 100


# --- outages -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_redis_down_and_broker_silent(nginx_factory, tmp_path, broker, how):
    srv = RedisServer(tmp_path)
    srv.start()
    url = srv.url
    ng = nginx_factory(runtime(redis_store_cfg(url), broker.endpoint, timeout=2), expect_errors=True)
    from renderd.store.redis import RedisStore
    st = RedisStore(url, prefix="rpy")
    st.put_metatile("world", *make_meta("world", Meta(5, 0, 0, 8)))
    st.close()
    assert_tile(request(ng.port, tile_path(5, 0, 0)), 5, 0, 0, "STORE")
    assert_tile(wait_xcache(ng.port, tile_path(5, 1, 1), "HIT"), 5, 1, 1, "HIT")  # filled after the answer
    if how == "killed":
        srv.stop()
    else:  # accepts connections, never answers
        os.kill(srv.proc.pid, signal.SIGSTOP)
    broker.mode = "silent"

    def one(i):
        return request(ng.port, tile_path(9, i, i), timeout=20)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(one, range(40)))
    assert time.monotonic() - t0 < 2 + 2.5
    for r in results:
        assert r.status == 503 and r.elapsed < 2 + 1.5, (r.status, r.elapsed)
    # a tile in the hot cache is still served
    assert request(ng.port, tile_path(5, 1, 1)).h("x-cache") == "HIT"
    # broker down too (connection refused): fast 503s
    broker.close()
    results = [request(ng.port, tile_path(10, i, 7)) for i in range(20)]
    assert all(r.status == 503 and r.elapsed < 1.0 for r in results)
    errors = ng.errors()
    assert 1 <= len(errors) <= 6, "\n".join(errors)
    # the whole outage (80 requests) fits in a few lines of any level
    lines = ng.log_text().splitlines()
    assert len(lines) <= 10, "\n".join(lines[:40])
    if how == "frozen":
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def test_redis_worker_keeps_repeated_blobs(nginx_factory, redis_store, redis_url, broker):
    """A dict miss reads the pack's first bytes (header, entries and the
    records up to the tile's), then one range: the tile with the copy of its
    record before it, from the first or the second string of a pack cut in
    two, or both in a transaction where the cut lies inside it; or the pool
    tile. A pool tile (the 'ocean' column: it repeats) is kept by the
    worker, as its bytes never change for its hash; a tile of the pack is
    read each time, in the first read if the pack is that short."""
    from renderd.store.pack import POOL, decode_pack
    ng = nginx_factory(runtime(redis_store_cfg(redis_url), broker.endpoint, hot_ttl=0.001), workers=1)
    cut, other, lone = Meta(9, 16, 0, 8), Meta(9, 24, 0, 8), Meta(9, 32, 0, 8)
    for m in (cut, other):
        redis_store.put_metatile("world", *make_meta("world", m))
    # one tile, (38, 7): the pack is shorter than the first read
    redis_store.put_metatile("world", *make_meta("world", lone, empty={(t.x, t.y) for t in meta_tiles(lone)
                                                                       if (t.x, t.y) != (38, 7)}))
    r = redis_store._r
    first, rest = (r.get(k) for k in redis_store.pack_keys("world", cut))
    assert rest, "the test wants a pack cut in two"
    pack, c = decode_pack(first + rest, len(first) + len(rest)), len(first)

    def tile_where(test):
        i = next(i for i, (off, n) in enumerate(pack.locations) if (off, n) != POOL and test(off - 24, off + n))
        return 9, cut.x0 + i // 8, cut.y0 + i % 8
    in_first, in_rest = tile_where(lambda a, b: b <= c), tile_where(lambda a, b: a >= c)
    across = tile_where(lambda a, b: a < c < b)
    ocean = content_hash(tile_bytes("world", 9, 0, 0))
    mon = RedisMonitor(redis_url)
    try:
        for z, x, y in ((9, 18, 0), (9, 27, 0), (9, 21, 2), in_first, in_rest, in_rest, across, (9, 38, 7)):
            time.sleep(0.01)                       # (past the hot cache's 1 ms)
            assert_tile(request(ng.port, tile_path(z, x, y)), z, x, y, "STORE")
        time.sleep(0.3)
        assert mon.count(f"rpy:pool:{ocean}") == 1, mon.calls
        assert mon.count("GETRANGE rpy:pk:world:9:2:0 0 ") == 6, mon.calls
        assert mon.count("GETRANGE rpy:pk:world:9:2:0 ") == 6 + 2, mon.calls   # in_first, across
        assert mon.count("GETRANGE rpy:pt:world:9:2:0 ") == 2 + 1, mon.calls   # in_rest twice, across
        assert mon.count("MULTI") == 1, mon.calls                              # across
        assert mon.count("GETRANGE rpy:pk:world:9:4:0 0 ") == 1, mon.calls     # (38, 7): one read
    finally:
        mon.close()


@pytest.mark.parametrize("damage, logged", [
    ("pool", "changed or went while being read"),  # collected between the pack read and the pool read
    ("short", "truncated pack"),                   # a pack cut off within its head
    ("entry", "names record"),                     # an entry beyond the records
])
def test_redis_damaged_store_rendered_again(redis_front, redis_store, redis_url, broker, damage, logged):
    """A Redis pack or pool tile that cannot give the tile: one line in the
    error log, the tile rendered (and stored again), never a wrong tile."""
    import redis
    ng = redis_front
    ng.expect_errors = True
    meta = Meta(8, 16, 8, 8)
    idx, blobs = make_meta("world", meta)
    redis_store.put_metatile("world", idx, blobs)
    x, y = (18, 10) if damage == "pool" else (17, 10)   # the shared 'ocean', or a tile of its own
    i = (x - 16) * 8 + (y - 8)
    key = redis_store.pack_keys("world", meta)[0]
    r = redis.Redis.from_url(redis_url)
    if damage == "pool":
        r.delete(redis_store.pool_key(idx.tile_hash(x, y)))
    elif damage == "short":
        r.set(key, r.getrange(key, 0, 100))
    else:
        r.setrange(key, 64 + 2 * i, b"\xff\xff")
    mon = RedisMonitor(redis_url)
    try:
        assert_tile(request(ng.port, tile_path(8, x, y)), 8, x, y, "RENDER")
        assert len(broker.renders()) == 1
        time.sleep(0.3)
        pack_reads = mon.count(f"GETRANGE {key} 0 ")
        assert pack_reads == (2 if damage == "pool" else 1), mon.calls   # a pool tile gone: read again
        assert ng.log_text().count(logged) == 1
        assert redis_store.read_tile("world", Tile(8, x, y)).data == tile_bytes("world", 8, x, y)
    finally:
        mon.close()
        r.close()


def test_redis_connection_killed_or_scripts_flushed(nginx_factory, redis_store, redis_url, broker):
    """The worker's pipelined Redis connection: a connection the server
    closes is replaced (the commands lost with it are sent again), and a
    Redis that forgot the scripts (restart, SCRIPT FLUSH) gets them again."""
    import redis
    # (nginx itself logs the reset connections as errors)
    ng = nginx_factory(runtime(redis_store_cfg(redis_url), broker.endpoint, hot_ttl=0.001), expect_errors=True)
    metas = [Meta(9, 8 * i, 0, 8) for i in range(4)]
    for m in metas:
        redis_store.put_metatile("world", *make_meta("world", m))
    r = redis.Redis.from_url(redis_url)
    try:
        assert_tile(request(ng.port, tile_path(9, 1, 1)), 9, 1, 1, "STORE")
        r.client_kill_filter(_type="normal", skipme=True)
        assert_tile(request(ng.port, tile_path(9, 9, 1)), 9, 9, 1, "STORE")
        r.script_flush()
        assert_tile(request(ng.port, tile_path(9, 17, 1)), 9, 17, 1, "STORE")
        r.client_kill_filter(_type="normal", skipme=True)
        r.script_flush()
        for x in range(24, 32):
            res = request(ng.port, tile_path(9, x, 2))
            assert_tile(res, 9, x, 2, res.h("x-cache"))
            assert res.h("x-cache") in ("STORE", "HIT")   # (HIT: within the 1 ms of hot_ttl)
        assert broker.renders() == []
        assert not [e for e in ng.errors() if "recv() failed" not in e], ng.errors()
    finally:
        r.close()


# --- CORS ---------------------------------------------------------------------------------

def test_cors_by_default(front):
    """MapLibre GL fetches tiles with CORS: tiles, their 304s and errors say '*'."""
    ng, store, broker = front
    z, x, y = 5, 3, 3
    store.put_metatile("world", *make_meta("world", metatile_of(z, x, y)))
    r = request(ng.port, tile_path(z, x, y), headers={"Origin": "https://other.example"})
    assert r.status == 200 and r.h("access-control-allow-origin") == "*"
    r = wait_xcache(ng.port, tile_path(z, x, y), "HIT")
    assert r.h("access-control-allow-origin") == "*"
    r = request(ng.port, tile_path(z, x, y), headers={"If-None-Match": r.h("etag")})
    assert r.status == 304 and r.h("access-control-allow-origin") == "*"
    for path in (tile_path(13, 0, 0), "/tiles/nope/1/0/0.png", "/tiles/world/x/0/0.png"):
        r = request(ng.port, path)
        assert r.status in (400, 404) and r.h("access-control-allow-origin") == "*", path


def test_cors_per_layer_or_none(nginx_factory, disk_store, broker):
    broker.store = disk_store
    other = dict(LAYER, name="shared", cors="https://maps.example.org")
    ng = nginx_factory(runtime({"kind": "disk", "path": disk_store.path}, broker.endpoint, cors="",
                               layers=[LAYER, other]))
    r = request(ng.port, tile_path(4, 1, 1))
    assert r.status == 200 and "access-control-allow-origin" not in r.headers
    r = request(ng.port, tile_path(4, 1, 1, layer="shared"))
    assert r.status == 200 and r.h("access-control-allow-origin") == "https://maps.example.org"
    r = request(ng.port, "/tiles/nope/1/0/0.png")
    assert r.status == 404 and "access-control-allow-origin" not in r.headers
    broker.mode = "busy"
    r = request(ng.port, tile_path(9, 1, 1, layer="shared"))
    assert r.status == 503 and r.h("access-control-allow-origin") == "https://maps.example.org"


# --- purge -----------------------------------------------------------------------------

def purge(ng, body: str, layer="world", mode="dirty", method="POST") -> tuple[int, dict | bytes]:
    import json as _json
    c = http.client.HTTPConnection("127.0.0.1", ng.metrics_port, timeout=10)
    try:
        c.request(method, f"/purge?layer={layer}&mode={mode}", body=body.encode())
        r = c.getresponse()
        data = r.read()
        return r.status, (_json.loads(data) if r.status == 200 else data)
    finally:
        c.close()


def test_purge_dirty_marks_hot_copies_stale(front):
    ng, store, broker = front
    meta = Meta(6, 16, 8, 8)
    store.put_metatile("world", *make_meta("world", meta))
    assert_tile(wait_xcache(ng.port, tile_path(6, 17, 9), "HIT"), 6, 17, 9, "HIT")
    store.mark_stale("world", meta)   # what expire does first
    status, rep = purge(ng, "6/20/12\n6/23/15\nnot a tile\n6/99/0\n\n")
    assert status == 200 and rep == {"metatiles": 1, "tiles": 64, "malformed": 2}, rep
    r = request(ng.port, tile_path(6, 17, 9))
    assert_tile(r, 6, 17, 9, "STALE")   # served at once, a re-render queued
    (msg,) = broker.wait_renders(1)
    assert msg[3:6] == [b"world", b"6/17/9", b"1"]
    assert_tile(wait_xcache(ng.port, tile_path(6, 18, 10), "HIT"), 6, 18, 10, "HIT")


def test_purge_delete_drops_hot_copies(front):
    ng, store, broker = front
    meta = Meta(6, 24, 8, 8)
    store.put_metatile("world", *make_meta("world", meta))
    assert_tile(wait_xcache(ng.port, tile_path(6, 25, 9), "HIT"), 6, 25, 9, "HIT")
    store.delete_metatile("world", meta)
    status, rep = purge(ng, "6/24/8\n", mode="delete")
    assert status == 200 and rep["metatiles"] == 1 and rep["tiles"] == 64, rep
    assert_tile(request(ng.port, tile_path(6, 25, 9)), 6, 25, 9, "RENDER")
    assert len(broker.renders()) == 1


@pytest.mark.parametrize("mode", ["dirty", "delete"])
def test_purge_beats_a_fill_that_read_the_store_before(front, mode):
    """A hot-cache fill that read the metatile before the store changed and
    ends after the purge must not bring the old copy back as fresh."""
    ng, store, broker = front
    meta = Meta(7, 40, 40, 8)
    store.put_metatile("world", *make_meta("world", meta))   # rendered in 2025
    # the purge comes first here; the index in the store is still the old one
    status, _ = purge(ng, "7/40/40\n", mode=mode)
    assert status == 200
    assert_tile(request(ng.port, tile_path(7, 41, 41)), 7, 41, 41, "STORE")
    time.sleep(0.3)   # (the fill from the store has run)
    want = "STALE" if mode == "dirty" else "STORE"
    assert_tile(request(ng.port, tile_path(7, 42, 42)), 7, 42, 42, want)


def test_purge_refuses_bad_requests(front):
    ng, store, broker = front
    assert purge(ng, "1/0/0\n", method="GET")[0] == 405
    assert purge(ng, "1/0/0\n", layer="nope")[0] == 400
    assert purge(ng, "1/0/0\n", mode="render")[0] == 400
    # tiles outside the layer's zooms name nothing; nothing reaches the store or broker
    status, rep = purge(ng, "13/0/0\n")
    assert status == 200 and rep == {"metatiles": 0, "tiles": 0, "malformed": 0}
    assert broker.messages == []


# --- metrics --------------------------------------------------------------------------

def test_metrics(front):
    ng, store, broker = front
    store.put_metatile("world", *make_meta("world", Meta(5, 0, 0, 8)))
    request(ng.port, tile_path(5, 0, 0))
    wait_xcache(ng.port, tile_path(5, 0, 1), "HIT")
    request(ng.port, tile_path(6, 40, 40))
    request(ng.port, "/tiles/nope/1/0/0.png")
    import urllib.request
    time.sleep(1.2)   # each nginx worker adds its counts to the shared dict every second
    text = urllib.request.urlopen(ng.metrics_url, timeout=10).read().decode()
    # (the hot cache fills just after the first answer, so maybe more than 1)
    assert re.search(r'renderd_http_requests_total\{cache="STORE",status="200"\} [1-9]\d*\n', text)
    assert re.search(r'renderd_http_requests_total\{cache="HIT",status="200"\} \d+', text)
    assert 'renderd_http_requests_total{cache="RENDER",status="200"} 1' in text
    assert 'renderd_http_requests_total{cache="NONE",status="404"} 1' in text
    assert re.search(r'renderd_shared_dict_capacity_bytes\{dict="rpy_tiles"\} \d+', text)
    assert re.search(r'renderd_shared_dict_free_bytes\{dict="rpy_tiles"\} \d+', text)
    assert 'renderd_render_requests_total{status="OK"} 1' in text
    assert 'renderd_render_seconds_count 1' in text
    assert 'renderd_render_seconds_bucket{le="+Inf"} 1' in text
    assert "renderd_cache_hits_total" in text and "renderd_cache_misses_total" in text
    assert "renderd_daemon_up 1" in text
    assert 'renderd_daemon_queue_depth{priority="missing"} 2' in text
    assert 'renderd_daemon_workers{state="busy"} 1' in text
    assert 'renderd_daemon_events_total{event="rendered"} 7' in text
    assert "renderd_daemon_running 1" in text
    assert "# TYPE renderd_render_seconds histogram" in text


def test_metrics_without_daemon(nginx_factory, tmp_path):
    ng = nginx_factory(runtime({"kind": "disk", "path": str(tmp_path / "s")},
                               f"tcp://127.0.0.1:{free_port()}"))
    import urllib.request
    text = urllib.request.urlopen(ng.metrics_url, timeout=10).read().decode()
    assert "renderd_daemon_up 0" in text


def test_redis_fill_script_comes_from_the_runtime_config(nginx_factory, redis_url, broker):
    """nginx runs renderd/store/redis_scripts.py's META_SCRIPT, passed in the runtime
    JSON (no copy of it in Lua); a Redis store without it is refused."""
    from renderd.store.redis_scripts import META_SCRIPT
    ng = nginx_factory(runtime(redis_store_cfg(redis_url), broker.endpoint), extra_server="""
        location = /t/sha { content_by_lua_block {
            ngx.print(require("renderd.store.redis").META_SHA) } }
    """)
    assert request(ng.port, "/t/sha").body.decode() == hashlib.sha1(META_SCRIPT.encode()).hexdigest()


def test_cache_buster_and_absolute_uri(front):
    ng, store, broker = front
    store.put_metatile("world", *make_meta("world", Meta(3, 0, 0, 8)))
    status, data = raw_request(ng.port, b"GET http://example.org/tiles/world/3/1/2.png?v=7 HTTP/1.1")
    assert status == 200 and data.endswith(tile_bytes("world", 3, 1, 2))


# --- configuration ----------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"layers": []}, "layers missing"),
    ({"broker": "udp://1.2.3.4:5"}, "broker"),
    ({"store": {"kind": "s3"}}, "unknown store kind"),
    ({"store": {"kind": "redis", "prefix": "rpy"}}, "store.meta_script missing"),
    ({"layers": [dict(LAYER, name="a/b")]}, "layers[1].name"),
    ({"layers": [dict(LAYER, maxzoom=31)]}, "zooms"),
    ({"dicts": {"tiles": "nope"}}, "lua_shared_dict nope"),
])
def test_bad_runtime_config_stops_nginx(nginx_factory, tmp_path, change, message):
    rt = runtime({"kind": "disk", "path": str(tmp_path / "s")}, "tcp://127.0.0.1:5555")
    rt.update(change)
    with pytest.raises(RuntimeError) as e:
        nginx_factory(rt)
    assert message in str(e.value)


def test_runtime_config_not_json(nginx_factory, tmp_path):
    from tests.fixtures.nginx import Nginx
    d = tmp_path / "bad"
    d.mkdir()
    ng = Nginx(d, runtime({"kind": "disk", "path": str(tmp_path)}, "tcp://127.0.0.1:1"))
    (d / "runtime.json").write_text('{"broker": "tcp://127.0.0.1:1", ')
    with pytest.raises(RuntimeError) as e:
        ng.start()
    assert "runtime.json: expected a key at byte" in str(e.value) or "at byte" in str(e.value)


def test_redis_unix_socket_password_db(nginx_factory, tmp_path, broker):
    import shutil
    import subprocess
    from renderd.store.redis import RedisStore
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--requirepass", "s3cret", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        st = RedisStore(f"unix://:s3cret@{sock}?db=3", prefix="tp")
        st.put_metatile("world", *make_meta("world", Meta(4, 8, 0, 8)))
        st.close()
        ng = nginx_factory(runtime({"kind": "redis", "socket": str(sock), "password": "s3cret",
                                    "db": 3, "prefix": "tp", "host": None, "port": None},
                                   broker.endpoint))
        assert_tile(request(ng.port, tile_path(4, 9, 3)), 4, 9, 3, "STORE")
        assert_tile(wait_xcache(ng.port, tile_path(4, 10, 3), "HIT"), 4, 10, 3, "HIT")
        assert broker.renders() == []
    finally:
        proc.terminate()
        proc.wait(10)


def test_render_over_ipc(nginx_factory, tmp_path, disk_store):
    b = FakeBroker(endpoint=f"ipc://{tmp_path}/broker.sock", store=disk_store)
    try:
        ng = nginx_factory(runtime({"kind": "disk", "path": disk_store.path}, b.endpoint))
        assert_tile(request(ng.port, tile_path(6, 10, 20)), 6, 10, 20, "RENDER")
        assert_tile(wait_xcache(ng.port, tile_path(6, 11, 21), "HIT"), 6, 11, 21, "HIT")
        assert len(b.renders()) == 1
    finally:
        b.close()


class RedisMonitor:
    """The script calls (EVALSHA/EVAL), reads (GETRANGE, GET) and
    transactions (MULTI) a redis-server receives (MONITOR)."""

    def __init__(self, url: str):
        import redis
        self.conn = redis.Redis.from_url(url)
        self.calls: list[str] = []
        self.mon = self.conn.monitor().__enter__()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            while True:
                got = self.mon.next_command()
                cmd = got["command"]
                if got.get("client_type") == "lua":      # run by a script
                    continue
                if cmd.upper().startswith(("EVALSHA ", "EVAL ", "GETRANGE ", "GET ", "MULTI")):
                    self.calls.append(cmd)
        except Exception:
            pass

    def count(self, word: str) -> int:
        return sum(1 for c in self.calls if word in c)

    def close(self):
        self.mon.__exit__()
        self.conn.close()


def test_concurrent_store_reads_share_one_round_trip(redis_front, redis_store, redis_url, broker):
    """A dict miss reads one tile (the pack's first bytes, GETRANGE, then its range);
    concurrent requests for that tile in a worker share the read; the
    metatile goes into the dict once (META_SCRIPT from a timer), however
    many of its tiles are asked for."""
    from renderd.store.redis_scripts import META_SCRIPT
    ng = redis_front
    meta = Meta(11, 800, 800, 8)
    redis_store.put_metatile("world", *make_meta("world", meta))
    meta_sha = hashlib.sha1(META_SCRIPT.encode()).hexdigest()
    key = redis_store.pack_keys("world", meta)[0]

    def tile_reads():
        return mon.count(f"GETRANGE {key} 0 ")
    mon = RedisMonitor(redis_url)
    try:
        def one(t):
            return t, request(ng.port, tile_path(*t))

        with concurrent.futures.ThreadPoolExecutor(max_workers=48) as pool:
            results = list(pool.map(one, [(11, 803, 805)] * 48))
            time.sleep(0.3)
            # 48 requests at once for one tile: one read per nginx worker (2)
            # while the first is under way, plus a few that came just after
            assert 1 <= tile_reads() <= 8, mon.calls
            results += list(pool.map(one, [(11, t.x, t.y) for t in meta_tiles(meta)]))
        for t, res in results:
            assert_tile(res, *t, res.h("x-cache"))
            assert res.h("x-cache") in ("STORE", "HIT")
        time.sleep(0.3)
        assert mon.count(meta_sha) == 1, mon.calls
        assert_tile(request(ng.port, tile_path(11, 807, 807)), 11, 807, 807, "HIT")
    finally:
        mon.close()


# --- tile sets of a layer with keys ---------------------------------------------------

SST = dict(LAYER, name="sst", maxzoom=8, keys=["year", "month"])


def front_with_layers(request, layers: list[dict]):
    """(nginx, store, broker) serving ``layers``, on the store kind ``request.param`` names."""
    store = request.getfixturevalue(f"{request.param}_store")
    cfg = ({"kind": "disk", "path": store.path} if request.param == "disk"
           else redis_store_cfg(request.getfixturevalue("redis_url")))
    broker = request.getfixturevalue("broker")
    broker.store = store
    return request.getfixturevalue("nginx_factory")(runtime(cfg, broker.endpoint, layers=layers)), store, broker


@pytest.fixture(params=["disk", "redis"])
def keyed_front(request):
    return front_with_layers(request, [LAYER, SST])


def test_tile_sets_of_a_layer_with_keys(keyed_front):
    """/tiles/sst/2024/07/z/x/y.png is the tile set sst/2024/07: read from the
    store and the hot cache under that name, rendered under it, purged by it;
    another month is another tile set."""
    ng, store, broker = keyed_front
    meta = Meta(5, 8, 16, 8)
    store.put_metatile("sst/2024/07", *make_meta("sst/2024/07", meta))
    r = request(ng.port, "/tiles/sst/2024/07/5/9/17.png")
    assert_tile(r, 5, 9, 17, "STORE", layer="sst/2024/07")
    r = wait_xcache(ng.port, "/tiles/sst/2024/07/5/15/23.png", "HIT")
    assert_tile(r, 5, 15, 23, "HIT", layer="sst/2024/07")
    # another month: not stored, rendered under its own name
    r = request(ng.port, "/tiles/sst/2024/08/5/9/17.png")
    assert_tile(r, 5, 9, 17, "RENDER", layer="sst/2024/08")
    (msg,) = broker.renders()
    assert msg[3:5] == [b"sst/2024/08", b"5/9/17"]
    assert store.get_metatile("sst/2024/08", meta) is not None
    for path, status in (("/tiles/sst/5/9/17.png", 400), ("/tiles/sst/2024/5/9/17.png", 400),
                         ("/tiles/sst/2024/./5/9/17.png", 400), ("/tiles/world/2024/5/9/17.png", 400),
                         ("/tiles/sst/2024/07/9/0/0.png", 404)):
        assert request(ng.port, path).status == status, path
    status, rep = purge(ng, "5/9/17\n", layer="sst/2024/07", mode="delete")
    assert status == 200 and rep["metatiles"] == 1 and rep["tiles"] == 64, rep
    assert request(ng.port, "/tiles/sst/2024/07/5/15/23.png").h("x-cache") == "STORE"
    for bad in ("sst", "sst/2024", "sst/2024/../x", "world/2024"):
        assert purge(ng, "5/9/17\n", layer=bad)[0] == 400, bad
    assert len(broker.renders()) == 1


def catalog_questions(broker) -> list[dict]:
    import json as _json
    with broker.lock:
        return [_json.loads(m[3]) for m in broker.messages if m[1:2] == [b"CATALOG"]]


def test_unknown_key_combination_is_404_without_a_render(keyed_front):
    ng, store, broker = keyed_front
    for path in ("/tiles/sst/2024/09/5/9/17.png", "/tiles/sst/1999/07/5/9/17.png"):
        r = request(ng.port, path)
        assert (r.status, r.body) == (404, b"unknown key combination\n"), path
        assert r.h("x-cache") is None
    assert broker.renders() == []
    # the combinations were asked for once per nginx worker, then kept
    assert 1 <= len(catalog_questions(broker)) <= 2
    assert all(q == {"op": "keys", "layer": "sst"} for q in catalog_questions(broker))


def test_key_combinations_follow_an_ingest(keyed_front):
    """A purge of the layer (what ingest sends) makes nginx ask again."""
    ng, store, broker = keyed_front
    assert request(ng.port, "/tiles/sst/2024/09/5/9/17.png").status == 404
    broker.catalog = lambda q: {"layer": "sst", "keys": ["year", "month"], "values": [["2024", "09"]],
                                "version": 2}
    assert purge(ng, "", layer="sst/2024/09")[0] == 200
    assert_tile(request(ng.port, "/tiles/sst/2024/09/5/9/17.png"), 5, 9, 17, "RENDER", layer="sst/2024/09")
    assert request(ng.port, "/tiles/sst/2024/07/5/9/17.png").status in (404, 200)  # (the other worker may not know yet)


def test_key_combinations_when_the_daemon_cannot_say(nginx_factory, disk_store, broker):
    broker.catalog = None        # silent
    ng = nginx_factory(runtime({"kind": "disk", "path": disk_store.path}, broker.endpoint,
                               layers=[LAYER, SST], status_timeout=0.3), expect_errors=True)
    r = request(ng.port, "/tiles/sst/2024/07/5/9/17.png")
    assert r.status == 503 and r.h("retry-after") == "5", (r.status, r.body)
    assert broker.renders() == []


def test_catalog_documents(keyed_front):
    ng, store, broker = keyed_front
    meta = {"layer": "sst", "keys": {"year": "2024", "month": "07"}, "bounds": [-180, -90, 180, 90],
            "bands": 1, "dtype": "float32", "statistics": [{"band": 1, "min": -2.0, "max": 31.5}]}
    tj = {"tilejson": "3.0.0", "name": "sst/2024/07", "tiles": ["@RPY_BASE@/tiles/sst/2024/07/{z}/{x}/{y}.png"]}
    listing = {"layer": "sst", "total": 2, "page": 1, "limit": 100, "datasets": []}

    def answer(q):
        if q["op"] == "metadata":
            return meta if q["values"] == ["2024", "07"] else {"status": 404, "error": "sst/x/y: no such datasets"}
        if q["op"] == "tilejson":
            return tj
        if q["op"] == "datasets":
            return dict(listing, where=q["where"], asked_limit=q.get("limit"))
        return {"layer": "sst", "keys": ["year", "month"], "values": [["2024", "07"]], "version": 1}
    broker.catalog = answer
    r = request(ng.port, "/metadata/sst/2024/07.json")
    assert r.status == 200 and r.h("content-type") == "application/json"
    assert json.loads(r.body) == meta and r.h("access-control-allow-origin") == "*"
    r = request(ng.port, "/metadata/sst/2024/08.json")
    assert (r.status, r.body) == (404, b"sst/x/y: no such datasets\n")
    r = request(ng.port, "/tiles/sst/2024/07.json")
    assert r.status == 200, r.body
    assert json.loads(r.body)["tiles"] == [f"http://127.0.0.1:{ng.port}/tiles/sst/2024/07/{{z}}/{{x}}/{{y}}.png"]
    r = request(ng.port, "/datasets/sst.json?month=07&limit=5")
    doc = json.loads(r.body)
    assert r.status == 200 and doc["where"] == {"month": "07"} and doc["asked_limit"] == 5
    for path, status in (("/datasets/nope.json", 404), ("/metadata/sst/2024.json", 404),
                         ("/metadata/sst/2024/../x.json", 404), ("/datasets/sst.json?limit=x", 400),
                         ("/datasets/sst.json?a%20b=1", 400), ("/metadata/world/1.json", 404)):
        assert request(ng.port, path).status == status, path
    assert request(ng.port, "/metadata/sst/2024/07.json", method="POST").status == 405
    assert broker.renders() == []
    broker.catalog = b"FAIL catalog unavailable"
    assert request(ng.port, "/metadata/sst/2024/07.json").status == 503


def test_cluster_reads_each_block_from_its_master(cluster_front, cluster_store):
    """Metatiles of 16 blocks, spread over the masters: each tile comes from
    the store, and no read was sent to a master that had to redirect it (the
    front's slot of a block is the cluster's)."""
    ng = cluster_front
    metas = [Meta(8, bx * 64, by * 64, 8) for bx in range(4) for by in range(4)]
    for m in metas:
        cluster_store.put_metatile("world", *make_meta("world", m))
    assert len({cluster_store._r.keyslot(cluster_store.pack_keys("world", m)[0]) for m in metas}) == 16
    for m in metas:
        assert_tile(request(ng.port, tile_path(8, m.x0 + 1, m.y0 + 2)), 8, m.x0 + 1, m.y0 + 2, "STORE")
    assert "moved" not in ng.log_text()


def test_cluster_reads_follow_a_slot_migrating_and_moved(nginx_factory, cluster_store, redis_cluster_url,
                                                        redis_cluster, broker):
    """A block's slot migrating to another master (its keys moved: the
    source answers ASK), then given to it (MOVED): the tiles are still
    served from the store, and the hot-cache fills after each read (one
    script each, which would log an error if it failed) follow too."""
    from renderd.nginx.addresses import redis_settings
    cluster = redis_cluster()
    broker.store = cluster_store
    ng = nginx_factory(runtime(redis_settings(redis_cluster_url, "rpy"), broker.endpoint, hot_ttl=0.001))
    meta = Meta(8, 64, 128, 8)
    cluster_store.put_metatile("world", *make_meta("world", meta))
    assert_tile(request(ng.port, tile_path(8, 65, 129)), 8, 65, 129, "STORE")   # (the slot map is read)
    key = cluster_store.pack_keys("world", meta)[0]
    slot = cluster_store._r.keyslot(key)
    src = cluster_store._r.get_node_from_key(key).port
    dst = next(p for p in cluster.masters() if p != src)
    cluster.start_migration(slot, src, dst)
    for x, y in ((66, 130), (71, 135)):    # ASK: the head and a tile beyond it
        assert_tile(request(ng.port, tile_path(8, x, y)), 8, x, y, "STORE")
    assert "moved" not in ng.log_text()
    cluster.finish_migration(slot, dst)
    for x, y in ((67, 131), (70, 129)):    # MOVED, then the new master directly
        assert_tile(request(ng.port, tile_path(8, x, y)), 8, x, y, "STORE")
    assert f"moved from 127.0.0.1:{src} to 127.0.0.1:{dst}" in ng.log_text()
    assert broker.renders() == []
