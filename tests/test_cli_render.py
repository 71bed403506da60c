"""``renderd-py render``, ``gc`` and ``status``: exact output and exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renderd import config
from renderd.store import EMPTY, MetaIndex, content_hash, open_store
from renderd.tilemath import Meta, Tile
from tests.fixtures.store import get_tile, stored_blobs

ROOT = Path(__file__).resolve().parents[1]
STYLE = ROOT / "tests" / "data" / "meta_style.xml"
SEA = (0xA6, 0xCE, 0xE3)
LAND = (0xF2, 0xEF, 0xE9)


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderd.cli.main", *args], cwd=cwd,
                          capture_output=True, timeout=120)


@pytest.fixture
def cfgfile(tmp_path):
    path = tmp_path / "renderd-py.toml"
    path.write_text(f"""
[daemon]
broker = "tcp://127.0.0.1:{free_port()}"

[store]
path = "{tmp_path / "store"}"

[[layer]]
name = "t"
style = "{STYLE}"
minzoom = 1
maxzoom = 6
""")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixel(png: bytes, x: int, y: int) -> tuple[int, int, int]:
    import mapnik
    c = mapnik.Image.from_buffer(png).get_pixel_color(x, y)
    return (c.r, c.g, c.b)


# --- render -----------------------------------------------------------------

def test_render_writes_the_tile(tmp_path, cfgfile):
    out = tmp_path / "tile.png"
    r = run_cli("render", "t", "2", "2", "1", "-o", str(out), "-c", str(cfgfile))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    # the island (0..20 E, 0..20 N) fills the lower left of tile 2/2/1
    assert pixel(data, 20, 240) == LAND
    assert pixel(data, 200, 40) == SEA
    # the same bytes as the library call the daemon's workers are built on
    from renderd.render import render_tile_png
    assert data == render_tile_png(config.load(cfgfile).layer("t"), 2, 2, 1)


def test_render_to_stdout_and_top_level_config(tmp_path, cfgfile):
    r = run_cli("-c", str(cfgfile), "render", "t", "1", "1", "0", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"\x89PNG") and pixel(r.stdout, 128, 128) == SEA


@pytest.mark.parametrize("args, message", [
    (["nope", "2", "0", "0"], "renderd-py: error: unknown layer 'nope'"),
    (["t", "9", "0", "0"], "renderd-py: error: layer t: zoom 9 outside 1-6"),
    (["t", "0", "0", "0"], "renderd-py: error: layer t: zoom 0 outside 1-6"),
    (["t", "2", "4", "1"], "renderd-py: error: layer t: tile 2/4/1 outside the grid 0..3"),
    (["t", "2", "1", "-1"], "renderd-py: error: layer t: tile 2/1/-1 outside the grid 0..3"),
    (["t", "2", "one", "1"], "renderd-py: error render: Invalid value for 'X': 'one' is not a valid integer."),
    (["t", "2", "1"], "renderd-py: error render: Missing argument 'Y'."),
])
def test_render_bad_input_exits_2_with_one_line(tmp_path, cfgfile, args, message):
    out = tmp_path / "x.png"
    r = run_cli("render", *args, "-o", str(out), "-c", str(cfgfile))
    assert r.returncode == 2
    assert r.stdout == b""
    assert r.stderr.decode().splitlines() == [message]
    assert not out.exists()


def test_render_without_output_option(cfgfile):
    r = run_cli("render", "t", "2", "1", "1", "-c", str(cfgfile))
    assert r.returncode == 2
    assert r.stderr.decode().splitlines() == ["renderd-py: error render: Missing option '-o' / '--output'."]


def test_render_runtime_failures_exit_1(tmp_path, cfgfile):
    r = run_cli("render", "t", "2", "1", "1", "-o", str(tmp_path / "no" / "dir" / "x.png"), "-c", str(cfgfile))
    assert r.returncode == 1
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("renderd-py: error: cannot write ")

    broken = tmp_path / "broken.xml"
    broken.write_text("<Map><Layer name='x'><Datasource><Parameter name='type'>nosuchplugin"
                      "</Parameter></Datasource></Layer></Map>")
    cfg2 = tmp_path / "broken.toml"
    cfg2.write_text(f'[store]\npath = "{tmp_path}/s"\n[[layer]]\nname = "b"\nstyle = "{broken}"\n')
    r = run_cli("render", "b", "2", "1", "1", "-o", str(tmp_path / "b.png"), "-c", str(cfg2))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("renderd-py: error: "), lines
    assert "Traceback" not in r.stderr.decode()
    assert not (tmp_path / "b.png").exists()


# --- gc ---------------------------------------------------------------------

def test_gc_frees_unreferenced_blobs(tmp_path, cfgfile):
    cfg = config.load(cfgfile)
    blobs = {i: b"\x89PNG tile %d" % i + bytes(100 * i) for i in range(1, 4)}
    digests = {i: content_hash(b) for i, b in blobs.items()}
    with open_store(cfg.store) as store:
        a = Meta(3, 0, 0, 8)
        b = Meta(3, 8, 0, 8)
        ha = [digests[1]] * 32 + [digests[2]] * 32
        hb = [digests[1]] * 63 + [EMPTY]
        store.put_metatile("t", MetaIndex(a, tuple(ha), 1, 1), {digests[1]: blobs[1], digests[2]: blobs[2]})
        store.put_metatile("t", MetaIndex(b, tuple(hb), 1, 1), {digests[1]: blobs[1]})
        store.put_metatile("t", MetaIndex(Meta(3, 0, 8, 8), tuple([digests[3]] * 64), 1, 1),
                           {digests[3]: blobs[3]})
        store.delete_metatile("t", a)                 # blob 2 is now unused, blob 1 is still used by b
        store.delete_metatile("t", Meta(3, 0, 8, 8))  # blob 3 too
    # blobs written in this very second are spared by a collector that
    # starts now (a writer may be about to name them): age them
    for dirpath, _, files in os.walk(tmp_path / "store"):
        for f in files:
            os.utime(os.path.join(dirpath, f), (time.time() - 120, time.time() - 120))
    r = run_cli("gc", "-c", str(cfgfile))
    assert r.returncode == 0, r.stderr
    freed = len(blobs[2]) + len(blobs[3])
    assert r.stdout.decode() == f"examined 3 blobs, deleted 2, freed {freed} B\n"
    r = run_cli("gc", "-c", str(cfgfile), "--json")
    assert json.loads(r.stdout) == {"blobs_seen": 1, "blobs_deleted": 0, "bytes_freed": 0}
    with open_store(cfg.store) as store:
        assert get_tile(store, "t", Tile(3, 8, 0)) == (blobs[1], store.get_index("t", b))
        assert stored_blobs(store) == {digests[1]: blobs[1]}


# --- status -----------------------------------------------------------------

def test_status_without_a_daemon_exits_1(cfgfile):
    endpoint = config.load(cfgfile).daemon.broker
    t0 = time.monotonic()
    r = run_cli("status", "--timeout", "0.5", "-c", str(cfgfile))
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"renderd-py: error: the daemon does not answer at {endpoint}")


def test_status_bad_timeout_exits_2(cfgfile):
    r = run_cli("status", "--timeout", "0", "-c", str(cfgfile))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1


def test_status_of_a_running_daemon(renderd_daemon):
    d = renderd_daemon(workers=1)
    with d.client() as c:
        c.render("shapes", Tile(2, 1, 1))
    r = d.run("status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["workers"]["total"] == 2  # 1 worker and 1 reserved for interactive requests
    assert set(s["queues"]) == {"missing", "stale", "bulk", "expiry"}
    assert s["counters"]["rendered"] >= 1
    r = d.run("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("queues ") and "missing 0" in lines[0]
    assert any(ln.startswith("workers ") and "total 2" in ln for ln in lines)
    assert any(ln.startswith("render time ") and "missing 1 in " in ln for ln in lines)
    i = lines.index("worker list:")
    assert lines[i + 1].split()[:2] == ["PID", "HOST"] and lines[i + 1].split()[-1] == "ROLE"
    assert len(lines) == i + 4 and {ln.split()[-1] for ln in lines[i + 2:]} == {"any", "interactive"}
