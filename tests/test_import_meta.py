"""``renderd-py import-meta``: a mod_tile directory into the disk and Redis
stores, byte for byte, deduplicated, with bad files reported and skipped."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from renderd import config
from renderd.tools import importmeta
from renderd.tools import metafile as mf
from renderd.errors import UsageError
from renderd.store import content_hash, open_store
from renderd.tilemath import Tile, metatile_of
from tests.fixtures.store import get_tile

ROOT = Path(__file__).resolve().parents[1]
STYLE = ROOT / "tests" / "data" / "meta_style.xml"
MTIME = 1_700_000_000


def png(r: int, g: int, b: int) -> bytes:
    """A real 256x256 RGBA PNG of one colour (numpy + zlib, no Mapnik)."""
    row = b"\x00" + bytes((r, g, b, 255)) * 256
    raw = row * 256

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    head = struct.pack(">IIBBBBB", 256, 256, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


OCEAN = png(166, 206, 227)
LAND = png(242, 239, 233)


def colour(i: int) -> bytes:
    return png(i % 256, (i * 7) % 256, (i * 13) % 256)


def build_cache(root: Path, style: str = "default") -> dict[tuple[int, int, int], bytes]:
    """A mod_tile tile directory; returns every tile written, by (z, x, y)."""
    tiles: dict[tuple[int, int, int], bytes] = {}

    def put(z: int, x0: int, y0: int, content: dict[tuple[int, int], bytes], mtime: float = MTIME,
            compress: bool = False) -> Path:
        meta = mf.MetaFile.build(z, x0, y0, content)
        for (x, y), data in content.items():
            if x < (1 << z) and y < (1 << z):
                tiles[(z, x, y)] = data
        return mf.write(mf.meta_path(root, z, x0, y0, style=style), meta, compress=compress, mtime=mtime)

    put(0, 0, 0, {(0, 0): colour(1)})
    # z=1: the grid is 2x2 but the file has 64 entries; (5, 5) is off the grid
    put(1, 0, 0, {(0, 0): OCEAN, (0, 1): LAND, (1, 0): OCEAN, (1, 1): colour(2), (5, 5): colour(3)})
    # z=3: a full metatile, mostly ocean
    put(3, 0, 0, {(x, y): (LAND if (x + y) % 5 == 0 else OCEAN) for x in range(8) for y in range(8)})
    # z=5: two metatiles, some tiles missing, shared colours across files
    put(5, 8, 16, {(8 + i, 16 + j): colour(10 + (i * 8 + j) % 7) for i in range(8) for j in range(8)
                   if (i + j) % 3})
    put(5, 16, 16, {(16 + i, 16 + j): OCEAN for i in range(4) for j in range(8)} | {(23, 23): colour(99)},
        compress=True)
    return tiles


def write_config(tmp_path: Path, store: str, metatile: int = 8, maxzoom: int = 18, fmt: str = "png") -> Path:
    path = tmp_path / "renderd-py.toml"
    path.write_text(f"""
[store]
{store}

[[layer]]
name = "osm"
style = "{STYLE}"
maxzoom = {maxzoom}
metatile = {metatile}
format = "{fmt}"
""")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "renderd.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def check_store(cfg: config.Config, tiles: dict, meta: int = 8) -> None:
    with open_store(cfg.store) as store:
        for (z, x, y), data in tiles.items():
            got = get_tile(store, "osm", Tile(z, x, y), meta=meta)
            assert got is not None, f"{z}/{x}/{y} missing"
            assert got[0] == data, f"{z}/{x}/{y} differs"
            assert got[1].rendered == MTIME and got[1].data == MTIME and not got[1].stale
        # tiles the files did not have are empty in the index
        got = get_tile(store, "osm", Tile(5, 8, 16), meta=meta)
        assert got is None
        idx = store.get_index("osm", metatile_of(1, 0, 0, meta))
        assert idx is not None and idx.meta.n == 2


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "mod_tile"
    return root, build_cache(root)


def test_import_into_disk_store(tmp_path, cache):
    root, tiles = cache
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"')
    r = run_cli("import-meta", "--layer", "osm", str(root), "-c", str(cfgpath), "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    s = json.loads(r.stdout)
    distinct = set(tiles.values())
    assert s["files"] == 5 and s["imported"] == 5 and s["failed"] == 0
    assert s["metatiles"] == 5
    assert s["tiles"] == len(tiles)
    assert s["unique"] == len(distinct)
    assert s["bytes_before"] == sum(len(d) for d in tiles.values())
    assert s["bytes_after"] == sum(len(d) for d in distinct)
    assert s["outside_grid"] == 1
    check_store(config.load(cfgpath), tiles)
    # each tile that repeats within a metatile is one file in the shared
    # pool; the others are inside their metatile's pack
    per_meta = Counter((metatile_of(z, x, y), data) for (z, x, y), data in tiles.items())
    repeated = {data for (_, data), count in per_meta.items() if count > 1}
    pool = [f for _, _, fs in os.walk(tmp_path / "store" / "blobs") for f in fs]
    assert s["new_blobs"] == len(pool) == len(repeated) < len(distinct)
    assert sorted(pool) == sorted(content_hash(d) for d in repeated)

    # importing again changes nothing and writes no blob
    r = run_cli("import-meta", "--layer", "osm", str(root), "-c", str(cfgpath), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["new_blobs"] == 0


def test_summary_for_people(tmp_path, cache):
    root, tiles = cache
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"')
    r = run_cli("import-meta", "-l", "osm", str(root), "-c", str(cfgpath))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "files         5 found, 5 imported, 0 failed"
    assert lines[1] == "metatiles     5 written (0 stale)"
    assert lines[2].startswith(f"tiles         {len(tiles)} ({len(set(tiles.values()))} unique, ")
    assert lines[3].startswith("bytes ") and "before deduplication" in lines[3]
    assert lines[-1] == "skipped       1 tiles outside the grid"


def test_corrupt_and_truncated_files_are_reported_and_skipped(tmp_path, cache):
    root, tiles = cache
    base = root / "default"
    good = mf.encode(mf.MetaFile.build(4, 8, 8, {(8, 8): colour(50), (9, 9): colour(51)}))
    truncated = mf.meta_path(base, 4, 8, 8)
    truncated.parent.mkdir(parents=True, exist_ok=True)
    truncated.write_bytes(good[:-100])
    corrupt = mf.meta_path(base, 4, 0, 8)
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(b"GARBAGE!" + good[8:])
    # a header that lies about where it is
    liar = mf.meta_path(base, 6, 0, 0)
    liar.parent.mkdir(parents=True, exist_ok=True)
    liar.write_bytes(mf.encode(mf.MetaFile.build(6, 8, 0, {(8, 0): colour(60)})))
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"')
    r = run_cli("import-meta", "--layer", "osm", str(root), "-c", str(cfgpath), "--json")
    assert r.returncode == 1
    errors = r.stderr.splitlines()
    assert len(errors) == 4, r.stderr
    assert f"{truncated}: truncated: tile 4/9/9 (entry 9) needs bytes up to" in errors[0] + errors[1] + errors[2]
    assert any(f"{corrupt}: not a mod_tile metatile" in e for e in errors)
    assert any(f"{liar}: corrupt header: it says metatile 6/8/0" in e for e in errors)
    assert errors[-1] == "renderd-py: error: 3 of 8 files could not be imported"
    assert "Traceback" not in r.stderr
    s = json.loads(r.stdout)
    assert s["failed"] == 3 and s["imported"] == 5
    assert {f["file"] for f in s["failures"]} == {str(truncated), str(corrupt), str(liar)}
    check_store(config.load(cfgpath), tiles)
    with open_store(config.load(cfgpath).store) as store:
        assert store.get_index("osm", metatile_of(4, 8, 8)) is None


def test_import_into_redis(tmp_path, cache, redis_url):
    pytest.importorskip("renderd.store.redis", reason="the Redis store is not there yet")
    root, tiles = cache
    cfgpath = write_config(tmp_path, f'kind = "redis"\nurl = "{redis_url}"')
    r = run_cli("import-meta", "--layer", "osm", str(root), "-c", str(cfgpath), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["unique"] == len(set(tiles.values()))
    check_store(config.load(cfgpath), tiles)
    # as on disk: each tile that repeats within a metatile is one pool entry
    per_meta = Counter((metatile_of(z, x, y), data) for (z, x, y), data in tiles.items())
    repeated = {content_hash(data) for (_, data), count in per_meta.items() if count > 1}
    with open_store(config.load(cfgpath).store) as store:
        pool = {k.decode().rsplit(":", 1)[1] for k in store._r.scan_iter("rpy:pool:*")}
    assert s["new_blobs"] == len(pool) and pool == repeated
    r = run_cli("import-meta", "--layer", "osm", str(root), "-c", str(cfgpath), "--json")
    assert json.loads(r.stdout)["new_blobs"] == 0


@pytest.mark.parametrize("size", [4, 16])
def test_other_metatile_sizes(tmp_path, cache, size):
    root, tiles = cache
    # a third z5 file, beside 5/8/16 in the same 16x16 metatile 5/0/16
    extra = {(0, 16): colour(70), (7, 23): OCEAN}
    mf.write(mf.meta_path(root, 5, 0, 16, style="default"), mf.MetaFile.build(5, 0, 16, extra), mtime=MTIME)
    tiles.update({(5, x, y): d for (x, y), d in extra.items()})
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"', metatile=size)
    cfg = config.load(cfgpath)
    with open_store(cfg.store) as store:
        st = importmeta.import_dir(store, cfg.layer("osm"), root)
    assert st.failed == 0 and st.files == 6
    if size == 4:
        # z0, z1 -> 1 + 1; z3 -> 4; z5: each file splits into 4 (the empty
        # quarters are written too: the file says those tiles are missing)
        assert st.metatiles == 1 + 1 + 4 + 3 * 4
    else:
        # z5: 5/0/16 and 5/8/16 fill one 16x16 metatile, 5/16/16 another
        assert st.metatiles == 1 + 1 + 1 + 2
    with open_store(cfg.store) as store:
        for (z, x, y), data in tiles.items():
            got = get_tile(store, "osm", Tile(z, x, y), meta=size)
            assert got is not None and got[0] == data, f"{z}/{x}/{y}"
        if size == 16:
            idx = store.get_index("osm", metatile_of(5, 8, 16, 16))
            assert idx.meta.n == 16 and idx.meta.x0 == 0
            assert sum(1 for h in idx.hashes if h != "0" * 32) == sum(1 for k in tiles if k[0] == 5 and k[1] < 16)


def test_expired_metatiles_are_imported_stale(tmp_path):
    root = tmp_path / "mod_tile"
    old = MTIME - 20 * 365 * 86400 - 5 * 86400  # what mod_tile's expiry does: 20 years back
    mf.write(mf.meta_path(root, 3, 0, 0, style="s"), mf.MetaFile.build(3, 0, 0, {(0, 0): OCEAN}), mtime=old)
    mf.write(mf.meta_path(root, 4, 8, 0, style="s"), mf.MetaFile.build(4, 8, 0, {(8, 0): LAND}), mtime=MTIME)
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"')
    cfg = config.load(cfgpath)
    with open_store(cfg.store) as store:
        st = importmeta.import_dir(store, cfg.layer("osm"), root)
        assert st.failed == 0 and st.imported == 2 and st.stale == 1
        assert not store.get_index("osm", metatile_of(4, 8, 0)).stale
        idx = store.get_index("osm", metatile_of(3, 0, 0))
        assert idx.stale and abs(idx.rendered - MTIME) < 10 * 86400


def test_planet_import_complete_marks_older_metatiles_stale(tmp_path):
    root = tmp_path / "mod_tile"
    mf.write(mf.meta_path(root, 3, 0, 0, style="s"), mf.MetaFile.build(3, 0, 0, {(0, 0): OCEAN}), mtime=MTIME)
    stamp = root / "planet-import-complete"
    stamp.touch()
    os.utime(stamp, (MTIME + 60, MTIME + 60))
    cfg = config.load(write_config(tmp_path, f'path = "{tmp_path / "store"}"'))
    with open_store(cfg.store) as store:
        st = importmeta.import_dir(store, cfg.layer("osm"), root)
        assert st.stale == 1 and store.get_index("osm", metatile_of(3, 0, 0)).stale


def test_zooms_outside_the_layer_and_option_files_are_skipped(tmp_path, cache):
    root, tiles = cache
    extra = mf.meta_path(root, 3, 0, 0, style="default", options="de")
    mf.write(extra, mf.MetaFile.build(3, 0, 0, {(0, 0): LAND}))
    cfg = config.load(write_config(tmp_path, f'path = "{tmp_path / "store"}"', maxzoom=3))
    with open_store(cfg.store) as store:
        st = importmeta.import_dir(store, cfg.layer("osm"), root)
        assert st.skipped_options == 1
        assert st.imported == 3 and st.failed == 0
        assert store.get_index("osm", metatile_of(5, 8, 16)) is None
    r = run_cli("import-meta", "-l", "osm", str(root), "-c", str(write_config(
        tmp_path, f'path = "{tmp_path / "store2"}"')), "--zoom", "5", "--json")
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["imported"] == 2 and s["metatiles"] == 2


def test_wrong_image_format_is_a_failure(tmp_path, cache):
    root, _ = cache
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"', fmt="jpeg80")
    r = run_cli("import-meta", "--layer", "osm", str(root), "-c", str(cfgpath), "-q")
    assert r.returncode == 1
    assert r.stderr.strip() == "renderd-py: error: 5 of 5 files could not be imported"


def test_style_directory_choice(tmp_path):
    root = tmp_path / "mod_tile"
    for style in ("osm", "topo"):
        mf.write(mf.meta_path(root, 0, 0, 0, style=style), mf.MetaFile.build(0, 0, 0, {(0, 0): OCEAN}))
    with pytest.raises(UsageError, match="several styles .*osm, topo.*--style"):
        importmeta.style_dir(root)
    assert importmeta.style_dir(root, "topo") == root / "topo"
    assert importmeta.style_dir(root / "osm") == root / "osm"
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"')
    r = run_cli("import-meta", "--layer", "osm", str(root), "-c", str(cfgpath))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"renderd-py: error: {root} holds several styles (osm, topo); "
                                "choose one with --style")
    r = run_cli("import-meta", "--layer", "osm", str(root), "--style", "topo", "-c", str(cfgpath), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["imported"] == 1


@pytest.mark.parametrize("args, message", [
    (["--layer", "nope", "{root}"], "renderd-py: error: unknown layer 'nope'"),
    (["--layer", "osm", "{root}/missing"], "does not exist"),
    (["{root}"], "Missing option '--layer'"),
    (["--layer", "osm", "--zoom", "9-3", "{root}"], "renderd-py: error: zoom range '9-3' is reversed"),
])
def test_bad_arguments_exit_2(tmp_path, cache, args, message):
    root, _ = cache
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"')
    r = run_cli("import-meta", *[a.format(root=root) for a in args], "-c", str(cfgpath))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_an_empty_directory_is_a_runtime_error(tmp_path):
    (tmp_path / "empty").mkdir()
    cfgpath = write_config(tmp_path, f'path = "{tmp_path / "store"}"')
    r = run_cli("import-meta", "--layer", "osm", str(tmp_path / "empty"), "-c", str(cfgpath))
    assert r.returncode == 1
    assert r.stderr.strip() == f"renderd-py: error: no .meta files found below {tmp_path / 'empty'}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable directories")
def test_unreadable_directory_is_reported(tmp_path, cache):
    root, _ = cache
    locked = root / "default" / "5"
    locked.chmod(0)
    try:
        cfg = config.load(write_config(tmp_path, f'path = "{tmp_path / "store"}"'))
        with open_store(cfg.store) as store:
            st = importmeta.import_dir(store, cfg.layer("osm"), root)
        assert st.failures == [(str(locked), "cannot list: Permission denied")]
    finally:
        locked.chmod(0o755)
