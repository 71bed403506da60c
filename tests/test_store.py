"""Both tile stores against the same contract, on real files and a real Redis."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from renderd.config import StoreConfig
from renderd.errors import StoreError
from renderd.store import open_store
from renderd.store.disk import DiskStore
from renderd.store.index import EMPTY, MAGIC, MetaIndex, content_hash
from renderd.store.pack import PACK_MAGIC, POOL, decode_pack, encode_pack
from renderd.store.redis import RedisStore, split_point
from renderd.store.redis_scripts import LUA_PACK, META_SCRIPT, TILE_SCRIPT
from renderd.tilemath import Meta, Tile
from tests.fixtures.store import (check_store, fill_background, get_tile, make_index, open_kind, python_cmd,
                                  ref_counts, shared_refs, stored_blobs, tile_bytes)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "storage.md"
M1 = Meta(12, 2048, 1360, 8)
M2 = Meta(12, 2056, 1360, 8)


def picks_of(*runs: tuple[int, int]) -> list[int]:
    """64 picks from (content, count) runs."""
    out = [c for c, k in runs for _ in range(k)]
    assert len(out) == 64
    return out


# --- the contract, on both stores ----------------------------------------

def test_round_trip(store):
    idx, blobs = make_index(M1, picks_of((0, 32), (1, 31), (-1, 1)))
    assert store.get_index("osm", M1) is None
    assert store.put_metatile("osm", idx, blobs) == 2
    assert store.get_index("osm", M1) == idx
    assert stored_blobs(store)[content_hash(tile_bytes(1))] == tile_bytes(1)
    got = store.get_metatile("osm", M1)
    assert got == (idx, blobs)
    assert store.metatile_sizes("osm", M1) == (idx, {h: len(b) for h, b in blobs.items()})
    assert store.metatile_sizes("osm", M2) is None
    assert store.get_metatile("osm", M2) is None
    check_store(store)


def test_identical_tiles_are_stored_once(store):
    a, blobs_a = make_index(M1, picks_of((0, 60), (1, 4)))
    b, blobs_b = make_index(M2, picks_of((0, 10), (2, 54)))
    assert store.put_metatile("osm", a, blobs_a) == 2
    assert store.put_metatile("osm", b, blobs_b) == 1
    assert len(stored_blobs(store)) == 3
    sizes = {idx: got for idx, got in store.iter_sizes("osm", zoom=12)}
    assert sizes == {a: {h: len(d) for h, d in blobs_a.items()}, b: {h: len(d) for h, d in blobs_b.items()}}
    assert list(store.iter_sizes("osm", zoom=3)) == []
    if store.kind == "redis":
        pool = store.pool_key(content_hash(tile_bytes(0)), store.namespace("osm", M1))
        assert store.namespace("osm", M1) == store.namespace("osm", M2) and ref_counts(store)[pool] == 2
    check_store(store)


def test_rerender_keeps_blobs_other_metatiles_use(store):
    a, blobs_a = make_index(M1, picks_of((0, 32), (1, 32)))
    b, blobs_b = make_index(M2, picks_of((0, 64)))
    store.put_metatile("osm", a, blobs_a)
    store.put_metatile("osm", b, blobs_b)
    again, blobs = make_index(M1, picks_of((3, 64)))
    assert store.put_metatile("osm", again, blobs) == 1
    store.collect_garbage()
    assert stored_blobs(store).keys() == {content_hash(tile_bytes(0)), content_hash(tile_bytes(3))}
    check_store(store, collected=True)


def test_rerender_with_same_tiles_changes_nothing_but_the_index(store):
    a, blobs = make_index(M1, picks_of((0, 64)), rendered=1_700_000_000)
    b, _ = make_index(M1, picks_of((0, 64)), rendered=1_700_000_500)
    store.put_metatile("osm", a, blobs)
    assert store.put_metatile("osm", b, {}) == 0
    assert store.get_index("osm", M1).rendered == 1_700_000_500
    check_store(store)


def test_tiles_left_out_come_from_the_current_pack(store):
    a, blobs = make_index(M1, picks_of((0, 62), (1, 1), (2, 1)))   # 1 and 2 inside the pack
    store.put_metatile("osm", a, blobs)
    b, _ = make_index(M1, picks_of((0, 32), (1, 16), (2, 16)))      # now they repeat: to the pool
    assert store.put_metatile("osm", b, {}) == 2
    assert store.get_metatile("osm", M1) == (b, blobs)
    check_store(store)


def test_stale_flag(store):
    idx, blobs = make_index(M1, picks_of((0, 64)))
    assert store.mark_stale("osm", M1) is False
    store.put_metatile("osm", idx, blobs)
    assert store.mark_stale("osm", M1) is True
    assert store.get_index("osm", M1) == replace(idx, stale=True)
    assert store.read_tile("osm", Tile(12, 2048, 1360)).stale is True
    fresh, _ = make_index(M1, picks_of((0, 64)))
    store.put_metatile("osm", fresh, {})
    assert store.get_index("osm", M1).stale is False


def test_delete(store):
    a, blobs_a = make_index(M1, picks_of((0, 32), (1, 32)))
    b, blobs_b = make_index(M2, picks_of((1, 64)))
    store.put_metatile("osm", a, blobs_a)
    store.put_metatile("osm", b, blobs_b)
    assert store.delete_metatile("osm", M1) is True
    assert store.delete_metatile("osm", M1) is False
    assert store.get_index("osm", M1) is None
    store.collect_garbage()
    assert stored_blobs(store) == {content_hash(tile_bytes(1)): tile_bytes(1)}
    check_store(store, collected=True)


def test_iter_indexes_by_layer_and_zoom(store):
    metas = [Meta(12, 2048, 1360, 8), Meta(12, 0, 0, 8), Meta(3, 0, 0, 8), Meta(1, 0, 0, 2)]
    for m in metas:
        store.put_metatile("osm", *make_index(m, [0] * m.n ** 2))
    store.put_metatile("other_layer-2", *make_index(M2, [1] * 64))
    assert sorted(i.meta for i in store.iter_indexes("osm")) == sorted(metas)
    assert sorted(i.meta for i in store.iter_indexes("osm", zoom=12)) == sorted(metas[:2])
    assert [i.meta for i in store.iter_indexes("osm", zoom=5)] == []
    assert [i.meta for i in store.iter_indexes("other_layer-2")] == [M2]
    assert list(store.iter_indexes("nothing")) == []


def test_get_tile_and_read_tile(store):
    picks = picks_of((0, 8), (1, 55), (-1, 1))
    idx, blobs = make_index(M1, picks)
    store.put_metatile("osm", idx, blobs)
    # entry 8 is the first tile of the second column: x0 + 1, y0
    assert get_tile(store, "osm", Tile(12, 2049, 1360)) == (tile_bytes(1), idx)
    assert get_tile(store, "osm", Tile(12, 2048, 1367)) == (tile_bytes(0), idx)
    assert get_tile(store, "osm", Tile(12, 2055, 1367)) is None  # empty entry
    assert get_tile(store, "osm", Tile(12, 0, 0)) is None
    got = store.read_tile("osm", Tile(12, 2049, 1360))
    assert got.data == tile_bytes(1) and got.digest == content_hash(tile_bytes(1))
    assert (got.stale, got.rendered, got.data_time, got.ext) == (False, idx.rendered, idx.data, "png")
    empty = store.read_tile("osm", Tile(12, 2055, 1367))
    assert (empty.data, empty.digest) == (None, None)
    assert store.read_tile("osm", Tile(12, 0, 0)) is None


def test_put_checks_its_input(store):
    idx, blobs = make_index(M1, picks_of((0, 64)))
    with pytest.raises(StoreError, match="neither stored nor given"):
        store.put_metatile("osm", idx, {})
    with pytest.raises(StoreError, match="another content hash"):
        store.put_metatile("osm", idx, {content_hash(tile_bytes(0)): b"other"})
    with pytest.raises(StoreError, match="invalid layer name"):
        store.put_metatile("../etc", idx, blobs)
    bad = MetaIndex(M1, ("X" * 32,) * 64, 1, 1)
    with pytest.raises(StoreError, match="malformed hash"):
        store.put_metatile("osm", bad, blobs)
    assert store.get_index("osm", M1) is None
    assert stored_blobs(store) == {}


def test_corrupt_index_counts_as_absent_and_is_replaced(store, caplog):
    good, blobs = make_index(M2, picks_of((0, 64)))
    store.put_metatile("osm", good, blobs)
    _write_raw_index(store, M1, b"RPYI1 0 12 0002048 garbage")
    assert store.get_index("osm", M1) is None
    assert store.read_tile("osm", Tile(12, 2048, 1360)) is None
    assert [i.meta for i in store.iter_indexes("osm")] == [M2]
    assert store.mark_stale("osm", M1) is True  # only the magic is checked
    assert "skipping" in caplog.text
    idx, blobs = make_index(M1, picks_of((1, 64)))
    store.put_metatile("osm", idx, blobs)
    assert store.get_index("osm", M1) == idx
    _write_raw_index(store, M2, b"garbage")
    assert store.mark_stale("osm", M2) is False
    assert store.get_index("osm", M2) is None
    store.collect_garbage()  # the corrupt index names nothing: tile 0's blob goes
    assert stored_blobs(store) == {content_hash(tile_bytes(1)): tile_bytes(1)}
    assert store.delete_metatile("osm", M2) is True
    check_store(store, collected=True)


def _write_raw_index(store, meta: Meta, raw: bytes) -> None:
    raw = raw.replace(MAGIC, PACK_MAGIC, 1) if raw.startswith(MAGIC) else raw
    if store.kind == "disk":
        path = store.pack_path("osm", meta)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(raw)
    else:
        store._r.set(store.pack_keys("osm", meta)[0], raw)


def test_collect_garbage_removes_only_unreferenced_blobs(store):
    a, blobs_a = make_index(M1, picks_of((0, 32), (1, 32)))
    store.put_metatile("osm", a, blobs_a)
    b, blobs_b = make_index(M1, picks_of((1, 32), (2, 32)))
    store.put_metatile("osm", b, blobs_b)
    if store.kind == "disk":
        stats = store.collect_garbage()
        assert (stats.blobs_seen, stats.blobs_deleted, stats.bytes_freed) == (3, 1, len(tile_bytes(0)))
    else:  # the script already deleted the blob whose count fell to 0
        assert store.collect_garbage().blobs_deleted == 0
    assert store.collect_garbage().blobs_deleted == 0
    check_store(store, collected=True)


def test_open_store_gives_both_kinds(tmp_path, redis_url):
    disk = open_store(StoreConfig("disk", str(tmp_path), "redis://x", "rpy", True))
    assert isinstance(disk, DiskStore) and disk.fsync
    with open_store(StoreConfig("redis", "", redis_url, "other", False)) as r:
        assert isinstance(r, RedisStore) and r.prefix == "other"
        r.put_metatile("osm", *make_index(M1, [0] * 64))
        assert r._r.exists("other:pk:osm:12:256:170")


# --- disk specifics -------------------------------------------------------

def test_disk_layout_is_the_documented_one(tmp_path):
    store = DiskStore(tmp_path, fsync=True)
    idx, blobs = make_index(M1, picks_of((0, 64)))
    store.put_metatile("osm", idx, blobs)
    h = content_hash(tile_bytes(0))
    pack = tmp_path / "tiles/osm/12/8/5/256_170.pack"  # blocks of 32 x 32 metatiles
    assert pack.read_bytes() == (b"RPYP2 0 12 0002048 0001360 08 1700000000 1699999940 png  0001  \n"
                                 + b"\x01\x00" * 64 + bytes.fromhex(h) + bytes(8))
    assert (tmp_path / "blobs" / h[:2] / h).read_bytes() == tile_bytes(0)
    assert (tmp_path / "gc.lock").exists()
    assert store.mark_stale("osm", M1)
    assert pack.read_bytes()[6:7] == b"1"


def test_disk_pack_bytes_exactly(tmp_path):
    """A 2x2 metatile: tiles 0 and 2 once each (inline, in order of first
    appearance), tile 1 twice (pool)."""
    store = DiskStore(tmp_path)
    meta = Meta(1, 0, 0, 2)
    idx, blobs = make_index(meta, [0, 1, 2, 1])
    assert store.put_metatile("osm", idx, blobs) == 1
    t0, t1, t2 = tile_bytes(0), tile_bytes(1), tile_bytes(2)
    head = 64 + 2 * 4 + 24 * 3
    h0, h1, h2 = (bytes.fromhex(content_hash(t)) for t in (t0, t1, t2))
    want = (b"RPYP2 0 01 0000000 0000000 02 1700000000 1699999940 png  0003  \n"
            + b"\x01\x00\x02\x00\x03\x00\x02\x00"
            + h0 + struct.pack("<II", head, len(t0))
            + h1 + bytes(8)
            + h2 + struct.pack("<II", head + len(t0), len(t2))
            + t0 + t2)
    assert len(want) == head + len(t0) + len(t2)
    assert (tmp_path / "tiles/osm/1/0/0/0_0.pack").read_bytes() == want
    assert stored_blobs(store) == {content_hash(t1): t1}
    assert decode_pack(want, len(want)).locations == ((head, len(t0)), POOL, (head + len(t0), len(t2)), POOL)
    assert encode_pack(idx, {content_hash(t0): t0, content_hash(t2): t2}) == want
    assert store.get_metatile("osm", meta) == (idx, blobs)
    for x, y, data in [(0, 0, t0), (0, 1, t1), (1, 0, t2), (1, 1, t1)]:
        assert get_tile(store, "osm", Tile(1, x, y), meta=2) == (data, idx)
        assert store.read_tile("osm", Tile(1, x, y), meta=2).data == data


def test_disk_repeated_tiles_go_to_the_pool_single_ones_inline(tmp_path):
    store = DiskStore(tmp_path)
    idx, blobs = make_index(M1, picks_of((0, 61), (1, 1), (2, 1), (-1, 1)))
    assert store.put_metatile("osm", idx, blobs) == 1
    h0, h1, h2 = (content_hash(tile_bytes(i)) for i in range(3))
    assert set(stored_blobs(store)) == {h0}
    pack = decode_pack(*_pack_file(store, M1))
    assert pack.pooled() == [h0]
    assert set(pack.inline()) == {h1, h2}
    assert pack.locations[63] == POOL  # the empty entry
    assert store.metatile_sizes("osm", M1) == (idx, {h: len(b) for h, b in blobs.items()})


def test_disk_tile_already_in_the_pool_is_referenced_not_inlined(tmp_path):
    store = DiskStore(tmp_path)
    sea, sea_blobs = make_index(M2, picks_of((5, 64)))
    store.put_metatile("osm", sea, sea_blobs)
    h5 = content_hash(tile_bytes(5))
    pool = store.pool_path(h5)
    old = time.time() - 3600
    os.utime(pool, (old, old))
    idx, blobs = make_index(M1, picks_of((0, 63), (5, 1)))
    assert store.put_metatile("osm", idx, blobs) == 1  # tile 0 only
    pack = decode_pack(*_pack_file(store, M1))
    assert pack.pooled() == [content_hash(tile_bytes(0)), h5] and pack.inline() == {}
    assert os.stat(pool).st_mtime > old + 1800  # touched: in use, for a running collection
    # the pool blob outlives the metatile that wrote it, while a pack names it
    store.delete_metatile("osm", M2)
    store.collect_garbage()
    assert h5 in stored_blobs(store)
    assert get_tile(store, "osm", Tile(12, 2055, 1367)) == (tile_bytes(5), idx)
    check_store(store, collected=True)
    # and goes with the last pack that names it
    store.put_metatile("osm", *make_index(M1, picks_of((0, 64))))
    os.utime(pool, (old, old))
    assert store.collect_garbage().blobs_deleted == 1
    assert h5 not in stored_blobs(store)
    check_store(store, collected=True)


def test_disk_inline_tile_keeps_no_pool_blob_alive(tmp_path):
    store = DiskStore(tmp_path)
    idx, blobs = make_index(M1, picks_of((0, 63), (7, 1)))
    store.put_metatile("osm", idx, blobs)      # tile 7 inline
    store.put_metatile("osm", *make_index(M2, picks_of((7, 64))))   # tile 7 into the pool
    store.delete_metatile("osm", M2)
    h7 = content_hash(tile_bytes(7))
    old = time.time() - 3600
    os.utime(store.pool_path(h7), (old, old))
    store.collect_garbage()
    assert h7 not in stored_blobs(store)
    assert get_tile(store, "osm", Tile(12, 2055, 1367)) == (tile_bytes(7), idx)
    check_store(store, collected=True)


def test_disk_pool_blob_collected_under_a_reader_reads_the_pack_again(tmp_path):
    """The pack a reader read was replaced and the pool blob it named
    collected before the reader opened the blob: the new pack is read."""
    store = DiskStore(tmp_path)
    idx, blobs = make_index(M1, picks_of((0, 63), (1, 1)))
    store.put_metatile("osm", idx, blobs)
    h0 = content_hash(tile_bytes(0))
    real_read = store._read_file
    newer, newer_blobs = make_index(M1, picks_of((0, 1), (2, 63)), rendered=1_700_000_100)

    def replaced_meanwhile(path):
        if path == store.pool_path(h0) and store.get_index("osm", M1) == idx:
            os.unlink(path)
            store.put_metatile("osm", newer, newer_blobs)   # tile 0 now once: inline
        return real_read(path)

    store._read_file = replaced_meanwhile
    got = store.read_tile("osm", Tile(12, 2048, 1360))
    assert (got.data, got.rendered) == (tile_bytes(0), newer.rendered)
    store.put_metatile("osm", idx, blobs)   # the same race under get_metatile
    assert store.get_metatile("osm", M1) == (newer, newer_blobs)
    # gone for good: the tile is left out, not an error
    os.unlink(store.pool_path(content_hash(tile_bytes(2))))
    assert store.get_metatile("osm", M1) == (newer, {h0: tile_bytes(0)})
    assert store.read_tile("osm", Tile(12, 2048, 1361)).data is None
    assert get_tile(store, "osm", Tile(12, 2048, 1361)) is None


def test_disk_put_may_leave_out_tiles_the_old_pack_holds(tmp_path):
    store = DiskStore(tmp_path)
    idx, blobs = make_index(M1, picks_of((0, 62), (1, 1), (2, 1)))
    store.put_metatile("osm", idx, blobs)
    again, _ = make_index(M1, picks_of((0, 61), (2, 1), (1, 2)), rendered=1_700_000_100)
    assert store.put_metatile("osm", again, {}) == 1  # tile 1 now twice: into the pool
    assert store.get_metatile("osm", M1) == (again, blobs)
    other, other_blobs = make_index(M1, picks_of((0, 63), (3, 1)))
    with pytest.raises(StoreError, match="neither stored nor given"):
        store.put_metatile("osm", other, {})
    assert store.get_index("osm", M1) == again
    check_store(store)


@pytest.mark.parametrize("damage", ["truncated", "short head", "outside", "entry past D", "unnamed record",
                                    "out of order", "no hash", "one hash twice",
                                    "count past the records", "count over n²", "count not digits"])
def test_disk_corrupt_pack_counts_as_absent(tmp_path, caplog, damage):
    store = DiskStore(tmp_path)
    idx, blobs = make_index(M1, picks_of((0, 62), (1, 1), (2, 1)))
    store.put_metatile("osm", idx, blobs)
    store.put_metatile("osm", *make_index(M2, picks_of((3, 64))))
    path = store.pack_path("osm", M1)
    raw = bytearray(Path(path).read_bytes())
    # records 1 (tile 0, pool), 2 (tile 1, inline), 3 (tile 2, inline)
    entries, records = 64, 64 + 2 * 64
    record = [None] + [records + 24 * k for k in range(3)]
    if damage == "truncated":
        del raw[-1]
    elif damage == "short head":
        del raw[records + 24 * 3 - 1:]
    elif damage == "outside":
        raw[record[3] + 16:record[3] + 24] = struct.pack("<II", len(raw) - 10, 11)
    elif damage == "entry past D":
        raw[entries + 2 * 62:entries + 2 * 63] = b"\x04\x00"
    elif damage == "unnamed record":
        raw[entries + 2 * 63:entries + 2 * 64] = b"\x00\x00"
    elif damage == "out of order":  # record 3 named before record 2
        raw[entries + 2 * 62:entries + 2 * 64] = b"\x03\x00\x02\x00"
    elif damage == "no hash":
        raw[record[1]:record[1] + 16] = bytes(16)
    elif damage == "one hash twice":
        raw[record[3]:record[3] + 16] = raw[record[2]:record[2] + 16]
    elif damage == "count past the records":  # D says 4: the records end inside the first inline tile
        raw[57:61] = b"0004"
    elif damage == "count over n²":
        raw[57:61] = b"0065"
    else:
        raw[57:61] = b" +03"
    Path(path).write_bytes(bytes(raw))
    assert store.get_index("osm", M1) is None
    assert store.get_metatile("osm", M1) is None
    assert store.metatile_sizes("osm", M1) is None
    assert store.read_tile("osm", Tile(12, 2048, 1360)) is None
    assert get_tile(store, "osm", Tile(12, 2055, 1367)) is None
    assert [i.meta for i in store.iter_indexes("osm")] == [M2]
    assert [i.meta for i, _ in store.iter_sizes("osm")] == [M2]
    assert "skipping" in caplog.text
    old = time.time() - 3600
    os.utime(store.pool_path(content_hash(tile_bytes(0))), (old, old))
    assert store.collect_garbage().blobs_deleted == 1  # a corrupt pack names nothing
    store.put_metatile("osm", idx, blobs)
    assert store.get_metatile("osm", M1) == (idx, blobs)


def test_disk_pack_of_the_earlier_format_is_absent_and_logged_once(tmp_path, caplog):
    """Packs of the ASCII format (an index, then 20-byte locations) are
    recognized, reported once per store and rendered again."""
    store = DiskStore(tmp_path)
    idx, blobs = make_index(M1, picks_of((0, 64)))
    store.put_metatile("osm", *make_index(M2, picks_of((0, 64))))
    for meta in (M1, Meta(12, 2064, 1360, 8)):
        old = MetaIndex(meta, idx.hashes, idx.rendered, idx.data)
        path = Path(store.pack_path("osm", meta))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(old.encode() + b"0000000000 00000000\n" * 64)
    assert store.get_index("osm", M1) is None
    assert store.read_tile("osm", Tile(12, 2048, 1360)) is None
    assert [i.meta for i in store.iter_indexes("osm")] == [M2]
    assert store.mark_stale("osm", M1) is False
    assert caplog.text.count("earlier format (RPYI1)") == 1
    store.put_metatile("osm", idx, blobs)
    assert get_tile(store, "osm", Tile(12, 2048, 1360)) == (tile_bytes(0), idx)


def test_disk_reads_only_the_head_for_indexes(tmp_path, monkeypatch):
    store = DiskStore(tmp_path)
    tiles = [tile_bytes(i) * 100 for i in range(64)]
    hashes = tuple(content_hash(t) for t in tiles)
    idx = MetaIndex(M1, hashes, 1_700_000_000, 1_700_000_000)
    store.put_metatile("osm", idx, dict(zip(hashes, tiles)))
    size = os.path.getsize(store.pack_path("osm", M1))
    head = 64 + 2 * 64 + 24 * 64
    assert size > 50 * head
    reads = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **kw: Counting(real_open(*a, **kw)))
    assert store.get_index("osm", M1) == idx
    assert [i for i, _ in store.iter_sizes("osm")] == [idx]
    assert list(store.iter_indexes("osm")) == [idx]
    assert store.metatile_sizes("osm", M1)[0] == idx
    assert store.read_tile("osm", Tile(12, 2049, 1361)).data == tiles[9]
    assert sum(reads) == 5 * head


def test_disk_ignores_old_index_files(tmp_path):
    store = DiskStore(tmp_path)
    idx, blobs = make_index(M1, picks_of((0, 64)))
    old = tmp_path / "tiles/osm/12/257/170.idx"
    old.parent.mkdir(parents=True)
    old.write_bytes(idx.encode())
    assert store.get_index("osm", M2) is None
    assert list(store.iter_indexes("osm")) == []
    store.put_metatile("osm", idx, blobs)
    assert [i.meta for i in store.iter_indexes("osm")] == [M1]


def test_disk_skips_temporary_and_stray_files(tmp_path):
    store = DiskStore(tmp_path)
    store.put_metatile("osm", *make_index(M1, [0] * 64))
    folder = tmp_path / "tiles/osm/12/8/5"
    (folder / ".256_171.pack.abc.tmp").write_bytes(b"half")
    (folder / "300_171.pack").write_bytes(b"in the wrong block")
    (folder / "notes.txt").write_bytes(b"x")
    assert [i.meta for i in store.iter_indexes("osm")] == [M1]
    stray = tmp_path / "blobs/aa/.x.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half")
    store.collect_garbage()
    assert stray.exists()  # younger than an hour
    old = time.time() - 7200
    os.utime(stray, (old, old))
    os.utime(folder / ".256_171.pack.abc.tmp", (old, old))
    store.collect_garbage()
    assert not stray.exists() and not (folder / ".256_171.pack.abc.tmp").exists()
    assert (folder / "notes.txt").exists()


def test_disk_pack_in_the_wrong_place_is_skipped(tmp_path, caplog):
    store = DiskStore(tmp_path)
    store.put_metatile("osm", *make_index(M1, [0] * 64))
    os.makedirs(os.path.dirname(store.pack_path("osm", M2)), exist_ok=True)
    shutil.copy(store.pack_path("osm", M1), store.pack_path("osm", M2))
    assert store.get_index("osm", M2) is None
    assert [i.meta for i in store.iter_indexes("osm")] == [M1]
    assert "holds metatile" in caplog.text


def _pack_file(store: DiskStore, meta: Meta) -> tuple[bytes, int]:
    raw = Path(store.pack_path("osm", meta)).read_bytes()
    return raw, len(raw)


def test_disk_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"^cannot create store directory .*file"):
        DiskStore(tmp_path / "file" / "store")


def test_disk_survives_sigkill_at_any_moment(tmp_path):
    """Writers killed mid-put leave only whole indexes whose blobs all exist."""
    target = str(tmp_path / "store")
    rnd = random.Random(7)
    for round_ in range(10):
        fsync = round_ % 3 == 2
        proc = subprocess.Popen(python_cmd(f"run_writer('disk', {target!r}, 30, {round_}, 40, {fsync})"),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        check_store(DiskStore(target))
    store = DiskStore(target)
    store.collect_garbage()
    check_store(store)


# --- redis specifics ------------------------------------------------------

def test_redis_keys_are_the_documented_ones(redis_url):
    with RedisStore(redis_url, prefix="t1") as store:
        idx, blobs = make_index(M1, picks_of((0, 63), (1, 1)))
        store.put_metatile("osm", idx, blobs)
        h0, h1 = content_hash(tile_bytes(0)), content_hash(tile_bytes(1))
        r = store._r
        assert sorted(r.keys("*")) == [b"t1:pk:osm:12:256:170", f"t1:pool:{h0}".encode()]
        assert r.get("t1:pk:osm:12:256:170") == encode_pack(idx, {h1: tile_bytes(1)}, marked=True)
        assert r.get(f"t1:pool:{h0}") == struct.pack("<I", 1) + tile_bytes(0)
        assert store.put_metatile("osm", *make_index(M2, [0] * 64)) == 0
        assert r.getrange(f"t1:pool:{h0}", 0, 3) == struct.pack("<I", 2)


def test_redis_cuts_a_long_pack_in_two(redis_url):
    """A pack whose string would waste a size class's slack is two strings,
    the first filling its class exactly; every reader joins them."""
    with RedisStore(redis_url) as store:
        hashes, blobs = [], {}
        for i in range(64):
            data = bytes([i]) * (100 + 4 * i)   # (a pack of 17 KiB: cut at 16 KiB)
            hashes.append(content_hash(data))
            blobs[hashes[-1]] = data
        idx = MetaIndex(M1, tuple(hashes), 1_700_000_000, 1_700_000_000)
        store.put_metatile("osm", idx, blobs)
        first, rest = (store._r.get(k) for k in store.pack_keys("osm", M1))
        pack = encode_pack(idx, blobs, marked=True)
        assert first + rest == pack and len(first) == split_point(len(pack), 192 + 24 * 64) < len(pack)
        assert store._r.memory_usage(store.pack_keys("osm", M1)[0]) < len(first) + 100
        assert store.get_metatile("osm", M1) == (idx, blobs)
        for i in range(64):
            assert store.read_tile("osm", Tile(12, 2048 + i // 8, 1360 + i % 8)).data == blobs[hashes[i]]
        assert store.get_index("osm", M1) == idx
        assert store.metatile_sizes("osm", M1) == (idx, {h: len(b) for h, b in blobs.items()})
        small, small_blobs = make_index(M1, picks_of((0, 32), (1, 32)))
        store.put_metatile("osm", small, small_blobs)   # a short pack again: the second key goes
        assert not store._r.exists(store.pack_keys("osm", M1)[1])
        assert store.delete_metatile("osm", M1) and store._r.keys("rpy:p[kt]:*") == []


def test_redis_reader_scripts_in_one_round_trip(redis_url):
    """What nginx does: EVAL the documented scripts with the metatile's keys."""
    with RedisStore(redis_url) as store:
        idx, blobs = make_index(M1, picks_of((0, 8), (1, 54), (2, 1), (-1, 1)))
        store.put_metatile("osm", idx, blobs)
        r, keys, none = store._r, ["rpy:pk:osm:12:256:170", "rpy:pt:osm:12:256:170"], ["rpy:pk:x", "rpy:pt:x"]
        head = r.get(keys[0])[:64]
        assert head.startswith(PACK_MAGIC)
        assert r.eval(TILE_SCRIPT, 2, *keys, "rpy", 8) == head + content_hash(tile_bytes(1)).encode() + tile_bytes(1)
        assert r.eval(TILE_SCRIPT, 2, *keys, "rpy", 62) == head + content_hash(tile_bytes(2)).encode() + tile_bytes(2)
        assert r.eval(TILE_SCRIPT, 2, *keys, "rpy", 63) == head + EMPTY.encode()
        assert r.eval(TILE_SCRIPT, 2, *none, "rpy", 0) is None
        with pytest.raises(Exception, match="outside the pack"):
            r.eval(TILE_SCRIPT, 2, *keys, "rpy", 64)
        raw, *tiles = r.eval(META_SCRIPT, 2, *keys, "rpy")
        assert raw == r.get(keys[0]) and tiles == [tile_bytes(0), tile_bytes(1)]
        assert r.eval(META_SCRIPT, 2, *none, "rpy") is None


def test_redis_ignores_the_earlier_layout(redis_url):
    """Keys of the earlier layout (an ASCII index and a blob per tile) are
    not read: the metatile counts as absent and is rendered again."""
    with RedisStore(redis_url) as store:
        idx, blobs = make_index(M1, picks_of((0, 64)))
        h = content_hash(tile_bytes(0))
        store._r.mset({"rpy:idx:osm:12:256:170": idx.encode(), f"rpy:blob:{h}": tile_bytes(0), f"rpy:ref:{h}": 1})
        assert store.get_index("osm", M1) is None and store.read_tile("osm", Tile(12, 2048, 1360)) is None
        assert list(store.iter_indexes("osm")) == [] and store.get_metatile("osm", M1) is None
        with pytest.raises(StoreError, match="neither stored nor given"):   # the old blob is not used
            store.put_metatile("osm", idx, {})
        store.put_metatile("osm", idx, blobs)
        assert store.get_metatile("osm", M1) == (idx, blobs)


def test_redis_read_tile_checks_which_metatile_the_pack_is(redis_url, caplog):
    with RedisStore(redis_url) as store:
        other, blobs = make_index(M2, picks_of((0, 64)))
        store.put_metatile("osm", other, blobs)
        r = store._r
        r.set(store.pack_keys("osm", M1)[0], r.get(store.pack_keys("osm", M2)[0]))   # M2's pack at M1's key
        assert store.read_tile("osm", Tile(12, 2048, 1360)) is None
        assert "is not the pack of metatile" in caplog.text
        assert store.get_index("osm", M1) is None
        assert store.read_tile("osm", Tile(12, 2056, 1360)).data == tile_bytes(0)


def test_redis_scripts_are_documented_verbatim():
    text = DOCS.read_text()
    assert TILE_SCRIPT in text and META_SCRIPT in text


def test_redis_gc_repairs_counts_and_orphans(redis_url):
    with RedisStore(redis_url) as store:
        idx, blobs = make_index(M1, picks_of((0, 32), (1, 32)))
        store.put_metatile("osm", idx, blobs)
        r = store._r
        h0 = content_hash(tile_bytes(0))
        r.setrange(f"rpy:pool:{h0}", 0, struct.pack("<I", 5))
        orphan = tile_bytes(9)
        r.set(f"rpy:pool:{content_hash(orphan)}", struct.pack("<I", 3) + orphan)
        stats = store.collect_garbage()
        assert (stats.blobs_seen, stats.blobs_deleted, stats.bytes_freed) == (3, 1, len(orphan))
        check_store(store, collected=True)
        assert not r.exists("rpy:gc:active", "rpy:gc:seen", "rpy:gc:count")


def test_redis_refuses_a_second_collection(redis_url):
    with RedisStore(redis_url) as store:
        store._r.set("rpy:gc:active", "someone-else")
        with pytest.raises(StoreError, match="another garbage collection is running"):
            store.collect_garbage()
        assert store._r.get("rpy:gc:active") == b"someone-else"


def test_redis_unreachable_is_one_line():
    from tests.fixtures.servers import free_port
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"^redis at 127\.0\.0\.1:\d+ is not reachable$"):
        store.get_index("osm", M1)
    assert time.monotonic() - started < 5
    with pytest.raises(StoreError, match="bad redis url"):
        RedisStore("http://nowhere")


# --- properties -----------------------------------------------------------

SLOTS = [("osm", Meta(5, 0, 0, 2)), ("osm", Meta(5, 2, 0, 2)), ("osm", Meta(5, 0, 2, 2)),
         ("sea", Meta(5, 0, 0, 2))]
PICK = st.integers(-1, 5)


class StoreMachine(RuleBasedStateMachine):
    """Random puts, re-puts, stale marks, deletes and collections over 4 metatiles."""

    kind = "disk"
    target = ""

    def __init__(self):
        super().__init__()
        if self.kind == "disk":
            self.dir = tempfile.mkdtemp(dir=self.target)
            self.store = DiskStore(self.dir)
        else:
            self.store = open_kind("redis", self.target)
            self.store._r.flushall()
        self.model: dict[int, MetaIndex] = {}

    @rule(slot=st.integers(0, 3), picks=st.lists(PICK, min_size=4, max_size=4))
    def put(self, slot, picks):
        layer, meta = SLOTS[slot]
        idx, blobs = make_index(meta, picks)
        self.store.put_metatile(layer, idx, blobs)
        self.model[slot] = idx

    @rule(slot=st.integers(0, 3))
    def delete(self, slot):
        assert self.store.delete_metatile(*SLOTS[slot]) is (slot in self.model)
        self.model.pop(slot, None)

    @rule(slot=st.integers(0, 3))
    def stale(self, slot):
        assert self.store.mark_stale(*SLOTS[slot]) is (slot in self.model)
        if slot in self.model:
            self.model[slot] = replace(self.model[slot], stale=True)

    @rule()
    def collect(self):
        self.store.collect_garbage()
        check_store(self.store, collected=True)

    @invariant()
    def consistent(self):
        check_store(self.store)
        for slot, (layer, meta) in enumerate(SLOTS):
            assert self.store.get_index(layer, meta) == self.model.get(slot)

    def teardown(self):
        self.store.close()
        if self.kind == "disk":
            shutil.rmtree(self.dir)


def test_random_operations_keep_the_store_consistent(store_kind, tmp_path):
    kind, target = store_kind
    machine = type(f"{kind.title()}Machine", (StoreMachine,),
                   {"kind": kind, "target": str(tmp_path) if kind == "disk" else target})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=list(HealthCheck)))


# --- concurrency ------------------------------------------------------------

def test_collection_while_writers_reuse_old_blobs(store_kind):
    """A collector in one process, a writer reusing a small pool of tiles in
    another: no visible index ever names a missing blob."""
    kind, target = store_kind
    with open_kind(kind, target) as store:
        fill_background(store, 2000)
    writer = subprocess.Popen(python_cmd(f"run_writer({kind!r}, {target!r}, 6, 1, 200, False, 64)"),
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    collector = subprocess.Popen(python_cmd(f"run_collector({kind!r}, {target!r}, 5)"),
                                 stdout=subprocess.PIPE, text=True)
    store = open_kind(kind, target)
    checks = 0
    while writer.poll() is None:
        _check_frozen(store)
        checks += 1
        time.sleep(0.02)
    runs, deleted = map(int, collector.communicate(timeout=30)[0].split())
    writer.communicate(timeout=30)
    assert writer.returncode == 0 and collector.returncode == 0
    assert checks > 10 and runs > 3
    if kind == "disk":  # in Redis the writer's scripts delete blobs themselves
        assert deleted > 0
    store.collect_garbage()
    check_store(store, collected=True)
    store.close()


def _check_frozen(store) -> None:
    """Check the invariants at one instant while others write and collect."""
    if store.kind == "disk":
        with store._locked(fcntl.LOCK_SH):  # holds off sweeps; writers may still publish
            missing = [h for h in shared_refs(store) if not os.path.exists(store.pool_path(h))]
    else:
        missing = store._r.eval(CHECK_SCRIPT, 0, store.prefix)
    assert not missing, f"store inconsistent: {missing[:3]}"


#: Atomic check of a small Redis store: pool tiles that a pack names and
#: that are missing, or whose count is wrong.
CHECK_SCRIPT = LUA_PACK + """
local P = ARGV[1]
local counts, bad = {}, {}
for _, k in ipairs(redis.call('KEYS', P .. ':pk:*')) do
  local raw, _, d, e = head(k)
  for _, h in ipairs(pooled(raw, d, e)) do counts[h] = (counts[h] or 0) + 1 end
end
for h, c in pairs(counts) do
  local v = redis.call('GET', P .. ':pool:' .. h)
  if not v then bad[#bad + 1] = 'missing ' .. h
  elseif struct.unpack('<I4', v) ~= c then bad[#bad + 1] = 'count ' .. h end
end
return bad
"""


def test_empty_entries_need_no_blob(store):
    idx = MetaIndex(M1, (EMPTY,) * 64, 1, 1)
    assert store.put_metatile("osm", idx, {}) == 0
    assert store.get_index("osm", M1) == idx
    assert store.get_metatile("osm", M1) == (idx, {})
