"""Several fronts: two nginx nodes on one daemon and store, a router from
``renderd-py nginx-conf --router`` in front of them (each metatile cached
on exactly one node), and purges fanned out to both (``[http] purge_url``
as a list); a purge from another host needs ``[http] purge_token``."""

from __future__ import annotations

import re
import subprocess
import urllib.request

import pytest

from tests.fixtures.servers import free_port, stop, wait_port
from tests.fixtures.stack import renderd_py

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(renderd_py() + list(args), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def start_nginx(prefix) -> subprocess.Popen:
    return subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def xcache(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        assert r.status == 200
        return r.headers["X-Cache"]


@pytest.fixture
def two_nodes(stack_factory, tmp_path):
    """Node A: `renderd-py up`; node B: a second nginx of the same stack;
    R: the router on both. Yields (stack, port of B, port of R)."""
    a = stack_factory(start=False)
    b_port, b_metrics, r_port = free_port(), free_port(), free_port()
    text = a.config.read_text()
    purge = f'purge_url = ["http://127.0.0.1:{a.metrics_port}/purge", ' \
            f'"http://127.0.0.1:{b_metrics}/purge"]\n'
    a.config.write_text(text.replace("[http]\n", "[http]\n" + purge, 1))
    a.start()
    procs = []
    try:
        b_dir, r_dir = tmp_path / "node-b", tmp_path / "router"
        b_dir.mkdir()
        r_dir.mkdir()
        b_cfg = b_dir / "b.toml"
        b_cfg.write_text(re.sub(r'listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{b_port}"',
                                re.sub(r'metrics = "127\.0\.0\.1:\d+"', f'metrics = "127.0.0.1:{b_metrics}"',
                                       a.config.read_text())))
        run("nginx-conf", "-c", str(b_cfg), "-o", str(b_dir / "nginx"))
        procs.append(start_nginx(b_dir / "nginx"))
        wait_port(b_port, proc=procs[-1])
        r_cfg = r_dir / "r.toml"
        r_cfg.write_text(re.sub(r'listen = "127\.0\.0\.1:\d+"', f'listen = "127.0.0.1:{r_port}"',
                                b_cfg.read_text()))
        run("nginx-conf", "-c", str(r_cfg), "--router", f"127.0.0.1:{a.port},127.0.0.1:{b_port}",
            "-o", str(r_dir / "nginx"))
        procs.append(start_nginx(r_dir / "nginx"))
        wait_port(r_port, proc=procs[-1])
        yield a, b_port, r_port
    finally:
        for p in procs:
            stop(p)


def test_each_metatile_is_cached_on_exactly_one_node(two_nodes):
    a, b_port, r_port = two_nodes
    router, node_a, node_b = (f"http://127.0.0.1:{p}" for p in (r_port, a.port, b_port))
    metas = [(8 * i, 8 * j) for i in range(4) for j in range(4)]   # 16 metatiles of zoom 6
    for x0, y0 in metas:
        assert xcache(f"{router}/tiles/world/6/{x0 + 1}/{y0 + 2}.png") == "RENDER"
    for x0, y0 in metas:       # another tile of the same metatile: the same node, hot
        assert xcache(f"{router}/tiles/world/6/{x0 + 5}/{y0 + 7}.png?v=1") == "HIT"
    owners = []
    for x0, y0 in metas:
        path = f"/tiles/world/6/{x0 + 3}/{y0 + 3}.png"
        got = (xcache(node_a + path), xcache(node_b + path))
        assert sorted(got) == ["HIT", "STORE"], (x0, y0, got)
        owners.append(got.index("HIT"))
    assert 0 < sum(owners) < len(owners), "both nodes hold a share"
    # an OGC API tile URL goes to the node that holds its metatile
    for x0, y0 in metas[:4]:
        ogc = f"{router}/ogcapi/collections/world/map/tiles/WebMercatorQuad/6/{y0 + 4}/{x0 + 4}"
        assert xcache(ogc) == "HIT"
    # TileJSON and other documents pass through
    with urllib.request.urlopen(f"{router}/tiles/world.json", timeout=30) as r:
        assert r.status == 200 and b'"tiles"' in r.read()


def test_purge_reaches_every_node(two_nodes):
    a, b_port, _ = two_nodes
    for port in (a.port, b_port):
        xcache(f"http://127.0.0.1:{port}/tiles/world/3/4/2.png")
        assert xcache(f"http://127.0.0.1:{port}/tiles/world/3/5/3.png") in ("HIT", "STORE")
    r = subprocess.run(renderd_py() + ["expire", "-c", str(a.config), "--layer", "world", "--min-zoom", "3",
                                       "--mode", "delete", "-"],
                       input="3/4/2\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "nginx (2 fronts): 128 hot tiles of 1 metatiles dropped" in r.stdout, r.stdout


def own_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))      # (no packet is sent: it only picks a route)
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_a_purge_from_another_host_needs_the_token(stack_factory):
    ip = own_address()
    if ip is None:
        pytest.skip("this machine has no address beside loopback")
    s = stack_factory(start=False, http='purge_token = "t0ken"\n')
    s.config.write_text(re.sub(r'metrics = "127\.0\.0\.1:', 'metrics = "0.0.0.0:', s.config.read_text()))
    s.start()

    def post(host, headers):
        import http.client
        conn = http.client.HTTPConnection(host, s.metrics_port, timeout=30)
        conn.request("POST", "/purge?layer=world&mode=delete", body="3/4/2\n", headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    assert post("127.0.0.1", {})[0] == 200                     # loopback: no token needed
    status, body = post(ip, {})
    assert status == 403 and b"purge_token" in body
    assert post(ip, {"X-Purge-Token": "wrong"})[0] == 403
    assert post(ip, {"X-Purge-Token": "t0ken"})[0] == 200
