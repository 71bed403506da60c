"""The Lua ZMTP 3.x client (lua/renderd/zmtp.lua) inside a real nginx,
against a pyzmq ROUTER and against a hand-written ZMTP peer that misbehaves."""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
import zmq

from tests.fixtures.servers import free_port

ZMTP_LOCATION = r"""
        location = /t/zmtp {
            content_by_lua_block {
                local zmtp = require "renderd.zmtp"
                local args = ngx.req.get_uri_args()
                local conn, err = zmtp.connect(args.ep, { timeout = 2000 })
                if not conn then
                    ngx.status = 502
                    ngx.say("ERR ", err)
                    return
                end
                local frames = {}
                for s in args.sizes:gmatch("%d+") do
                    frames[#frames + 1] = string.rep(string.char(65 + #frames % 26), tonumber(s))
                end
                local ok
                ok, err = conn:send(frames)
                local reply
                if ok then
                    reply, err = conn:recv(2000)
                end
                if not reply then
                    conn:close()
                    ngx.status = 502
                    ngx.say("ERR ", err)
                    return
                end
                local reused = conn.reused
                conn:keepalive()
                ngx.say("reused ", reused)
                for _, f in ipairs(reply) do
                    ngx.say(#f, " ", ngx.md5(f))
                end
            }
        }
        location = /t/alive {
            content_by_lua_block { ngx.say("alive") }
        }
"""


def frames_for(sizes):
    return [bytes([65 + i % 26]) * s for i, s in enumerate(sizes)]


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class EchoRouter:
    """A pyzmq ROUTER that answers each message with its frames reversed."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.received: list[list[bytes]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stopping:
            if poller.poll(50):
                ident, *frames = self.sock.recv_multipart()
                self.received.append(frames)
                self.sock.send_multipart([ident, *reversed(frames)])

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def echo_router():
    r = EchoRouter(f"tcp://127.0.0.1:{free_port()}")
    yield r
    r.close()


@pytest.fixture
def zmtp_nginx(nginx_factory):
    return nginx_factory(extra_server=ZMTP_LOCATION, workers=1)


def check_echo(body: str, sizes):
    lines = body.strip().splitlines()
    assert lines[0].startswith("reused ")
    expect = [f"{len(f)} {md5(f)}" for f in reversed(frames_for(sizes))]
    assert lines[1:] == expect


@pytest.mark.parametrize("sizes", [[4], [0, 1, 2], [255, 256], [300, 70000], [1 << 20]])
def test_multipart_roundtrip(zmtp_nginx, echo_router, sizes):
    st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep={echo_router.endpoint}&sizes={','.join(map(str, sizes))}")
    assert st == 200, body
    check_echo(body, sizes)
    assert echo_router.received[-1] == frames_for(sizes)


def test_connection_reused(zmtp_nginx, echo_router):
    url = f"{zmtp_nginx.url}/t/zmtp?ep={echo_router.endpoint}&sizes=3,5"
    st1, b1 = get(url)
    st2, b2 = get(url)
    assert st1 == st2 == 200
    assert b1.startswith("reused 0")
    assert b2.startswith("reused 1"), b2
    check_echo(b2, [3, 5])


def test_ipc_endpoint(zmtp_nginx, tmp_path):
    r = EchoRouter(f"ipc://{tmp_path}/b.sock")
    try:
        st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep={r.endpoint}&sizes=10,300")
        assert st == 200, body
        check_echo(body, [10, 300])
    finally:
        r.close()


# --- a hand-written peer ------------------------------------------------------

def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_frame(s: socket.socket) -> tuple[int, bytes]:
    flags = recv_exact(s, 1)[0]
    if flags & 2:
        size = struct.unpack(">Q", recv_exact(s, 8))[0]
    else:
        size = recv_exact(s, 1)[0]
    return flags, recv_exact(s, size)


def frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def command(name: bytes, data: bytes = b"") -> bytes:
    return frame(bytes([len(name)]) + name + data, 4)


SERVER_GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31
ROUTER_READY = command(b"READY", b"\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER")


class RawPeer:
    """Accepts one connection at a time and runs ``script(conn)`` on it."""

    def __init__(self, script, greeting: bytes = SERVER_GREETING):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.script = script
        self.greeting = greeting
        self.seen: dict = {}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def run(self):
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                self.seen["greeting"] = recv_exact(conn, 64)
                conn.sendall(self.greeting)
                if self.greeting[:1] != b"\xff":
                    return
                self.seen["ready"] = read_frame(conn)
                conn.sendall(ROUTER_READY)
                self.script(self, conn)
            except (EOFError, OSError) as e:
                self.seen["error"] = e

    def close(self):
        self.srv.close()
        self.thread.join(5)


def test_greeting_and_ready_bytes(zmtp_nginx):
    def script(peer, conn):
        peer.seen["message"] = [read_frame(conn), read_frame(conn)]
        conn.sendall(frame(b"x", 1) + frame(b"y"))

    p = RawPeer(script)
    try:
        st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep={p.endpoint}&sizes=1,300")
        assert st == 200, body
    finally:
        p.close()
    g = p.seen["greeting"]
    assert g[:10] == b"\xff" + b"\0" * 8 + b"\x7f"
    assert g[10:12] == b"\x03\x00"
    assert g[12:32] == b"NULL" + b"\0" * 16
    assert g[32] == 0 and g[33:] == b"\0" * 31
    flags, body = p.seen["ready"]
    assert flags == 4
    assert body[:6] == b"\x05READY"
    assert b"\x0bSocket-Type\x00\x00\x00\x06DEALER" in body
    assert b"\x08Identity\x00\x00\x00\x00" in body
    (f1, b1), (f2, b2) = p.seen["message"]
    assert (f1, b1) == (1, b"A")               # short frame, MORE
    assert (f2, len(b2)) == (2, 300)           # long frame, last


def test_ping_answered_with_pong(zmtp_nginx):
    def script(peer, conn):
        read_frame(conn)
        conn.sendall(command(b"PING", b"\x00\x0actx"))
        peer.seen["pong"] = read_frame(conn)
        conn.sendall(frame(b"ok"))

    p = RawPeer(script)
    try:
        st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep={p.endpoint}&sizes=2")
    finally:
        p.close()
    assert st == 200, body
    assert p.seen["pong"] == (4, b"\x04PONGctx")
    assert body.splitlines()[1] == f"2 {md5(b'ok')}"


@pytest.mark.parametrize("cut", ["header", "long-header", "body"])
def test_peer_closes_mid_frame(zmtp_nginx, cut):
    def script(peer, conn):
        read_frame(conn)
        if cut == "header":
            conn.sendall(b"\x00")
        elif cut == "long-header":
            conn.sendall(b"\x02\x00\x00\x00")
        else:
            conn.sendall(frame(b"a", 1) + b"\x02" + struct.pack(">Q", 100000) + b"z" * 5000)
        conn.shutdown(socket.SHUT_RDWR)

    p = RawPeer(script)
    try:
        st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep={p.endpoint}&sizes=3")
    finally:
        p.close()
    assert st == 502 and body.startswith("ERR closed"), body
    assert get(f"{zmtp_nginx.url}/t/alive") == (200, "alive\n")


def test_not_a_zmtp_peer(zmtp_nginx):
    p = RawPeer(lambda peer, conn: None, greeting=b"HTTP/1.1 400 Bad Request\r\n".ljust(64, b" "))
    try:
        st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep={p.endpoint}&sizes=3")
    finally:
        p.close()
    assert st == 502 and "not a ZMTP peer" in body, body


def test_connection_refused(zmtp_nginx):
    st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep=tcp://127.0.0.1:{free_port()}&sizes=3")
    assert st == 502 and "connect" in body and "refused" in body, body


def test_silent_peer_times_out(zmtp_nginx):
    done = threading.Event()

    def script(peer, conn):
        read_frame(conn)
        done.wait(5)

    p = RawPeer(script)
    try:
        st, body = get(f"{zmtp_nginx.url}/t/zmtp?ep={p.endpoint}&sizes=3")
    finally:
        done.set()
        p.close()
    assert st == 502 and "timeout" in body, body


# --- renderd.client over the ZMTP client ------------------------------------------------

CLIENT_LOCATION = r"""
        location = /t/ping {
            content_by_lua_block {
                local client = require "renderd.client"
                client.configure(ngx.var.arg_ep, nil, { connect_timeout = 2000, retry = 1 })
                local ok, err = client.ping(tonumber(ngx.var.arg_ms) or 1000)
                ngx.say(ok and "PONG" or ("ERR " .. tostring(err)))
            }
        }
"""


@pytest.fixture
def client_nginx(nginx_factory):
    return nginx_factory(extra_server=ZMTP_LOCATION + CLIENT_LOCATION, workers=1)


def test_client_discards_stale_replies(client_nginx):
    done = threading.Event()

    def script(peer, conn):
        f1, proto = read_frame(conn)
        f2, cmd = read_frame(conn)
        f3, rid = read_frame(conn)
        peer.seen["request"] = (proto, cmd, rid)
        # a late reply to an earlier request, then this request's
        conn.sendall(frame(b"RPY1", 1) + frame(b"PONG", 1) + frame(b"999-1"))
        conn.sendall(frame(b"RPY1", 1) + frame(b"PONG", 1) + frame(rid))
        peer.seen["second"] = [read_frame(conn) for _ in range(3)]
        done.wait(5)

    p = RawPeer(script)
    try:
        st, body = get(f"{client_nginx.url}/t/ping?ep={p.endpoint}")
        assert (st, body) == (200, "PONG\n")
        # the connection went back to the pool: the next ping reuses it (the
        # peer accepts one connection only) and times out waiting
        st, body = get(f"{client_nginx.url}/t/ping?ep={p.endpoint}&ms=300")
        assert body.startswith("ERR timeout"), body
    finally:
        done.set()
        p.close()
    proto, cmd, rid = p.seen["request"]
    assert (proto, cmd) == (b"RPY1", b"PING") and re.fullmatch(rb"\d+-\d+", rid)
    assert [f[1] for f in p.seen["second"]][:2] == [b"RPY1", b"PING"]
    assert p.seen["second"][2][1] != rid


def test_client_pooled_connection_closed_by_broker(client_nginx):
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(ep)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if router.poll(50):
                ident, proto, cmd, rid = router.recv_multipart()
                router.send_multipart([ident, proto, b"PONG", rid])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert get(f"{client_nginx.url}/t/ping?ep={ep}") == (200, "PONG\n")
        stop.set()
        t.join(5)
        router.close()          # the broker restarts: pooled connection dies
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        for _ in range(100):    # zmq unbinds asynchronously
            try:
                router.bind(ep)
                break
            except zmq.ZMQError:
                time.sleep(0.05)
        stop.clear()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert get(f"{client_nginx.url}/t/ping?ep={ep}") == (200, "PONG\n")
    finally:
        stop.set()
        t.join(5)
        router.close()
        ctx.term()
