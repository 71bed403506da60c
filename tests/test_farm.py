"""The render farm: workers on other hosts (network namespaces here) over
ZeroMQ CURVE on [daemon] workers_bind; unknown keys refused and logged
once; keys re-read on HUP; a non-loopback endpoint without CURVE refused."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import time

import pytest

from renderd.tilemath import Tile
from tests.test_daemon import FAST, RENDERD, Serve

pytestmark = pytest.mark.slow


def keygen(d, name) -> subprocess.CompletedProcess:
    return subprocess.run(RENDERD + ["keygen", "-o", str(d), name], capture_output=True, text=True, timeout=60)


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path):
    r = keygen(tmp_path / "keys", "broker")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "keys" / "broker.key_secret").stat().st_mode) == 0o600
    assert "public-key" in (tmp_path / "keys" / "broker.key").read_text()
    again = keygen(tmp_path / "keys", "broker")
    assert again.returncode == 2 and "exists already" in again.stderr and again.stderr.count("\n") == 1
    assert keygen(tmp_path / "keys", "../x").returncode == 2


@pytest.mark.parametrize("daemon, key", [
    ({"workers_bind": "tcp://0.0.0.0:{port}"}, "daemon.workers_bind"),
    ({"broker": "tcp://0.0.0.0:{port}"}, "daemon.broker"),
    ({"workers_bind": "tcp://127.0.0.1:{port}", "curve_secret": "nowhere.key_secret"}, "daemon.curve_secret"),
])
def test_non_loopback_without_curve_is_refused_at_start(tmp_path, daemon, key):
    from tests.fixtures.servers import free_port
    s = Serve(tmp_path, FAST, **{k: v.format(port=free_port()) for k, v in daemon.items()})
    r = subprocess.run(RENDERD + ["serve", "-c", str(s.config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert key in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_remote_pool_without_curve_to_another_host_is_refused(tmp_path):
    s = Serve(tmp_path, FAST)
    r = subprocess.run(RENDERD + ["worker", "-c", str(s.config), "--connect", "tcp://192.0.2.1:5556"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CURVE" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def _workers(s: Serve) -> list[dict]:
    return s.status()["worker_list"]


def _wait(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_workers_in_other_namespaces_render_over_curve(tmp_path, netns):
    from tests.fixtures.servers import free_port
    (ns1, ns2) = netns(2)
    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    for name in ("broker", "w1", "w2"):
        assert keygen(keys, name).returncode == 0
    allowed.mkdir()
    (allowed / "w1.key").write_bytes((keys / "w1.key").read_bytes())
    port = free_port()
    s = Serve(tmp_path, FAST, workers=0,
              workers_bind=f"tcp://0.0.0.0:{port}", curve_secret=str(keys / "broker.key_secret"),
              authorized_workers=str(allowed)).start(wait=False)
    time.sleep(0.5)
    pools = []

    def remote(ns, key):
        proc = subprocess.Popen(ns.command(RENDERD + [
            "worker", "-c", str(s.config), "--connect", f"tcp://{ns.host_ip}:{port}", "--workers", "1",
            "--key", str(keys / f"{key}.key_secret"), "--broker-key", str(keys / "broker.key")]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pools.append(proc)
        return proc

    try:
        remote(ns1, "w1")
        s.wait_workers(1)
        (w,) = _workers(s)
        assert w["host"] == socket.gethostname()
        assert s.status()["hosts"] == {socket.gethostname(): 1}
        with s.client() as c:
            assert c.render("shapes", Tile(3, 7, 7)).ok
        assert _workers(s)[0]["jobs"] == 1
        # an unknown key: refused, renders nothing, logged once
        remote(ns2, "w2")
        time.sleep(4)
        assert len(_workers(s)) == 1
        assert s.output().count("refused a worker with an unknown key") == 1, s.output()
        # its key authorized, HUP: it joins
        (allowed / "w2.key").write_bytes((keys / "w2.key").read_bytes())
        s.proc.send_signal(signal.SIGHUP)
        assert _wait(lambda: len(_workers(s)) == 2), s.output()
        with s.client() as c:
            assert all(c.render("shapes", Tile(4, x, 0)).ok for x in (0, 8))
    finally:
        for proc in pools:
            proc.send_signal(signal.SIGTERM)
        for proc in pools:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        s.stop()


def test_a_remote_worker_comes_back_after_the_broker_restarts(tmp_path):
    """(on loopback: the workers' endpoint needs no CURVE there)"""
    from tests.fixtures.servers import free_port
    port = free_port()
    s = Serve(tmp_path, FAST, workers=0, workers_bind=f"tcp://127.0.0.1:{port}").start(wait=False)
    pool = subprocess.Popen(RENDERD + ["worker", "-c", str(s.config), "--connect", f"tcp://127.0.0.1:{port}",
                                       "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s.wait_workers(1)
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(30)
        s.log.close()
        s.log = open(tmp_path / "serve.log", "a+")
        s.start()
        assert pool.poll() is None
        with s.client() as c:
            assert c.render("shapes", Tile(2, 0, 0)).ok
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(30)
        s.stop()

