"""``renderd-py up``: the whole stack under supervisord, as a user runs it.

Real nginx with the Lua front, the real daemon rendering Natural Earth, a
real redis-server; loopback random ports; every test stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

import pytest

from tests.fixtures.stack import Stack, renderd_py, stack_missing, write_config

pytestmark = pytest.mark.slow


def supervised_pids(stack: Stack) -> dict[str, int]:
    from supervisor.xmlrpc import SupervisorTransport
    transport = SupervisorTransport(None, None, f"unix://{stack.prefix / 'supervisor.sock'}")
    rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    return {p["name"]: p["pid"] for p in rpc.supervisor.getAllProcessInfo() if p["statename"] == "RUNNING"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_gone(pids, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        time.sleep(0.1)
    return left


def test_up_serves_and_stops_on_ctrl_c(stack):
    assert stack.url.startswith("http://127.0.0.1:")
    assert "demo map at " + stack.url in stack.stderr
    pids = supervised_pids(stack)
    assert set(pids) == {"renderd", "nginx"}           # disk store: no redis-server

    r = stack.get("/tiles/world/3/4/2.png")
    assert r.status == 200, r.body[:200]
    assert r.headers["content-type"] == "image/png" and r.body[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.headers["x-cache"] == "RENDER"
    # same metatile: the shared dict, filled right after the first answer (from a timer,
    # which a busy machine may run after the next request: then once more)
    deadline = time.monotonic() + 5
    while (again := stack.get("/tiles/world/3/5/3.png")).headers["x-cache"] != "HIT" \
            and time.monotonic() < deadline:
        assert again.status == 200 and again.headers["x-cache"] == "STORE"
        time.sleep(0.1)
    assert again.status == 200 and again.headers["x-cache"] == "HIT"
    assert stack.get("/tiles/world/9/0/0.png").status == 404   # above maxzoom
    assert stack.get("/tiles/nope/0/0/0.png").status == 404

    tj = json.loads(stack.get("/tiles/world.json").body)
    assert tj["tilejson"] == "3.0.0"
    assert tj["tiles"] == [stack.url + "tiles/world/{z}/{x}/{y}.png"]
    assert stack.get("/").status == 200
    m = stack.get(stack.metrics_url)
    assert m.status == 200 and m.headers["content-type"].startswith("text/plain")

    # the disk store holds the metatile: blobs written by the daemon
    assert any((stack.dir / "cache" / "blobs").rglob("*"))

    assert stack.stop(signal.SIGINT, timeout=60) == 0
    assert "stopped" in stack.stderr
    assert wait_gone(pids.values()) == []
    assert not port_open(stack.port) and not port_open(stack.metrics_port)
    assert not stack.errors(), stack.errors()


def test_up_restarts_a_daemon_that_dies(stack):
    """supervisord brings a killed daemon back; nginx renders again without a restart."""
    pids = supervised_pids(stack)
    assert stack.get("/tiles/world/2/1/1.png").status == 200
    os.kill(pids["renderd"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = supervised_pids(stack)
        if now.get("renderd") not in (None, pids["renderd"]):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the daemon was not restarted")
    assert stack.proc.poll() is None                     # up itself goes on
    deadline = time.monotonic() + 60
    while True:                                          # until the new workers are ready
        r = stack.get("/tiles/world/4/8/5.png")
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status == 200 and r.headers["x-cache"] == "RENDER"
    assert supervised_pids(stack)["nginx"] == pids["nginx"]
    # nginx may say once that the broker went away, not once per request
    stack.expect_errors = True
    assert len(stack.errors()) <= 2, stack.errors()
    assert stack.stop() == 0


def test_up_starts_a_local_redis_and_stops_it(stack_factory, tmp_path):
    from tests.fixtures.servers import free_port
    import redis
    rport = free_port()
    stack = stack_factory(store="redis", redis_url=f"redis://127.0.0.1:{rport}/2")
    pids = supervised_pids(stack)
    assert set(pids) == {"redis", "renderd", "nginx"}
    assert (stack.prefix / "redis" / "redis.conf").exists()
    r = stack.get("/tiles/world/2/1/1.png")
    assert r.status == 200 and r.headers["x-cache"] == "RENDER"
    client = redis.Redis(host="127.0.0.1", port=rport, db=2)
    try:
        assert client.keys("t*"), "the tile did not reach the Redis store"
    finally:
        client.close()
    assert stack.stop(signal.SIGTERM, timeout=60) == 0
    assert wait_gone(pids.values()) == []
    assert not port_open(rport)


def test_up_uses_a_redis_already_running(stack_factory, redis_server):
    stack = stack_factory(store="redis", redis_url=redis_server.url)
    assert "using the redis-server already answering" in stack.stderr
    assert set(supervised_pids(stack)) == {"renderd", "nginx"}
    assert stack.get("/tiles/world/1/0/0.png").status == 200
    assert stack.stop() == 0
    assert port_open(redis_server.port)                 # not ours to stop


def _run_up(cfg: Path, timeout: float = 90, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(renderd_py() + ["up", "-c", str(cfg)], capture_output=True, text=True,
                          timeout=timeout, cwd=cfg.parent, env={**os.environ, **(env or {})})


@pytest.fixture
def up_dir(tmp_path):
    why = stack_missing()
    if why:
        pytest.skip(why)
    from tests.fixtures.servers import free_port
    return tmp_path, free_port(), free_port()


def test_up_port_in_use_is_one_line(up_dir):
    tmp, port, mport = up_dir
    cfg = write_config(tmp, port, mport)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = _run_up(cfg)
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "http.listen" in lines[0] and "already in use" in lines[0]


def test_up_listen_address_not_on_this_machine(up_dir):
    tmp, port, mport = up_dir
    cfg = write_config(tmp, port, mport)
    # TEST-NET-1: never an address of this machine; bound, never contacted
    cfg.write_text(cfg.read_text().replace(f'listen = "127.0.0.1:{port}"', f'listen = "192.0.2.1:{port}"'))
    r = _run_up(cfg)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an address of this machine" in lines[0], r.stderr


def test_up_daemon_that_cannot_start(up_dir):
    """A broken style stops the daemon; up says why in one line and leaves nothing running."""
    tmp, port, mport = up_dir
    bad = tmp / "bad.xml"
    bad.write_text("<Map><Layer")
    cfg = write_config(tmp, port, mport, layers=f'[[layer]]\nname = "bad"\nstyle = "{bad}"\n')
    r = _run_up(cfg)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""                                # no URL: the stack never came up
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("renderd-py: error: renderd failed to start:"), r.stderr
    assert "bad.xml" in last
    assert not any(ln.startswith("Traceback") for ln in r.stderr.splitlines())
    assert not port_open(port)
    assert not (tmp / "run" / "supervisord.pid").exists() or \
        not alive(int((tmp / "run" / "supervisord.pid").read_text() or 0))


def test_up_nginx_that_cannot_start(up_dir):
    """nginx passes `nginx -t` but dies at start (init_by_lua fails): one line,
    the daemon already started is stopped again."""
    tmp, port, mport = up_dir
    lua = tmp / "lua" / "renderd"
    lua.mkdir(parents=True)
    (lua / "front.lua").write_text('return { init = function() error("front refuses to start") end }\n')
    cfg = write_config(tmp, port, mport)
    r = _run_up(cfg, env={"RENDERD_PY_LUA_DIR": str(tmp / "lua")})
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("renderd-py: error: nginx failed to start:"), r.stderr
    assert "front refuses to start" in last
    assert not port_open(port)
    log = (tmp / "run" / "logs" / "renderd.log").read_text()
    assert "stopping" in log.lower()                  # the daemon was stopped, not left behind


def test_up_refuses_public_metrics(up_dir):
    tmp, port, mport = up_dir
    cfg = write_config(tmp, port, mport)
    cfg.write_text(cfg.read_text().replace(f'metrics = "127.0.0.1:{mport}"', f'metrics = "0.0.0.0:{mport}"'))
    r = _run_up(cfg)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "loopback" in r.stderr


def test_up_without_config_file(up_dir):
    tmp, _, _ = up_dir
    r = _run_up(tmp / "missing.toml")
    assert r.returncode == 2 and "not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _renderd(stack: Stack, *args: str, input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(renderd_py() + [args[0], "-c", str(stack.config), *args[1:]], input=input,
                          capture_output=True, text=True, timeout=120, cwd=stack.dir)


def _wait_xcache(stack: Stack, path: str, want: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        r = stack.get(path)
        if r.headers.get("x-cache") == want or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.mark.parametrize("store", ["disk", "redis"])
def test_expire_and_seed_reach_nginx_hot_cache(stack_factory, request, store):
    """expire (dirty): the hot copies turn STALE at once and come back fresh
    after the re-render; expire --mode delete: they go at once; seed --force:
    the re-rendered metatiles' hot copies go. nginx not running: a warning."""
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    # (the broker answers a repeat within recent_seconds of a render from its
    # memory, without a render; these steps follow each other faster)
    stack = stack_factory(store=store, redis_url=url, daemon="recent_seconds = 0.01")
    tile, neighbour = "/tiles/world/3/4/2.png", "/tiles/world/3/5/3.png"
    assert stack.get(tile).headers["x-cache"] == "RENDER"
    assert _wait_xcache(stack, neighbour, "HIT").headers["x-cache"] == "HIT"

    r = _renderd(stack, "expire", "--layer", "world", "--min-zoom", "3", "-", input="3/4/2\n")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "nginx:     64 hot tiles of 1 metatiles marked stale" in r.stdout, r.stdout
    assert stack.get(neighbour).headers["x-cache"] == "STALE"      # at once, not after hot_ttl
    assert _wait_xcache(stack, neighbour, "HIT").headers["x-cache"] == "HIT"   # re-rendered

    r = _renderd(stack, "expire", "--layer", "world", "--min-zoom", "3", "--mode", "delete", "--json", "-",
                 input="3/4/2\n")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    hot = json.loads(r.stdout)["hot_cache"]
    assert (hot["mode"], hot["metatiles"], hot["tiles"], hot["error"]) == ("delete", 1, 64, None)
    assert stack.get(neighbour).headers["x-cache"] == "RENDER"
    assert _wait_xcache(stack, neighbour, "HIT").headers["x-cache"] == "HIT"

    r = _renderd(stack, "seed", "--layer", "world", "--zoom", "3", "--bbox", "0,0,90,60", "--force", "--json",
                 "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    hot = json.loads(r.stdout.splitlines()[-1])["hot_cache"]
    assert (hot["mode"], hot["metatiles"], hot["error"]) == ("delete", 1, None), hot
    assert stack.get(neighbour).headers["x-cache"] in ("STORE", "RENDER")

    assert stack.stop() == 0
    r = _renderd(stack, "expire", "--layer", "world", "--min-zoom", "3", "-", input="3/4/2\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("renderd-py: warning: could not tell nginx at http://127.0.0.1:")
    assert r.stderr.count("\n") == 1 and "1 metatiles" in r.stderr, r.stderr
