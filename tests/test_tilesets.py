"""Tile sets (a layer with one value per key): names, the tools' --key, the
broker, the protocol, and both stores keeping them apart."""

from __future__ import annotations

import pytest

from renderd import config, protocol as p, tilesets
from renderd.broker import Broker
from renderd.errors import ProtocolError, UsageError
from renderd.store.disk import DiskStore
from renderd.store.index import MetaIndex, content_hash
from renderd.tilemath import Meta, Tile, meta_tiles
from tests.test_broker import Clock


def cfg():
    return config.parse({"layer": [
        {"name": "w", "style": "x.xml", "maxzoom": 10},
        {"name": "sst", "kind": "raster", "collection": "sst", "keys": ["year", "month"], "maxzoom": 8},
    ]}, check_files=False, env={})


def test_names_split_and_check():
    assert tilesets.name("sst", ["2024", "07"]) == "sst/2024/07"
    assert tilesets.split("sst/2024/07") == ("sst", ("2024", "07"))
    assert tilesets.split("w") == ("w", ())
    for good in ("w", "sst/2024/07", "a_b-c/v.1", "x/" + "v" * 64):
        assert tilesets.is_valid(good), good
    for bad in ("", "a/", "/a", "a//b", "a/..", "a/.", "a.b", "a/b c", "a/%2e", "a/" + "v" * 65,
                "/".join(["a"] + ["v"] * 9), None, 7):
        assert not tilesets.is_valid(bad), bad


def test_layer_of_and_key_options():
    c = cfg()
    lyr = tilesets.layer_of(c, "sst/2024/07")
    assert lyr.name == "sst/2024/07" and lyr.collection == "sst"
    assert tilesets.key_values(lyr) == {"year": "2024", "month": "07"}
    assert tilesets.layer_of(c, "w") is c.layer("w")
    assert tilesets.from_options(c, "sst", ["month=07", "year=2024"]) == "sst/2024/07"
    assert tilesets.from_options(c, "w", []) == "w"
    for layer, opts, msg in [
        ("sst", ["year=2024"], "needs --key month=VALUE"),
        ("sst", ["year=2024", "month=07", "day=1"], "has the keys year, month"),
        ("sst", ["year"], "give KEY=VALUE"),
        ("sst", ["year=2024", "year=2025", "month=1"], "given twice"),
        ("sst", ["year=..", "month=1"], "not . or .."),
        ("w", ["year=1"], "has no keys"),
        ("nope", [], "unknown layer"),
    ]:
        with pytest.raises(UsageError, match=msg):
            tilesets.from_options(c, layer, opts)
    with pytest.raises(UsageError, match="needs a value for each of its keys year, month"):
        tilesets.layer_of(c, "sst/2024")
    with pytest.raises(UsageError, match="has no keys"):
        tilesets.layer_of(c, "w/1")


def test_protocol_carries_tile_set_names():
    req = p.RenderRequest(b"r1", "sst/2024/07", Tile(3, 1, 2))
    assert p.decode_render(req.frames()[2:]).layer == "sst/2024/07"
    for bad in (b"sst/../x", b"sst//x", b"s t"):
        frames = req.frames()[2:]
        frames[1] = bad
        with pytest.raises(ProtocolError):
            p.decode_render(frames)


def test_broker_queues_tile_sets_apart_and_checks_their_values():
    sent = []
    b = Broker(cfg(), sent.append, clock=Clock(), kill=lambda pid: None, pool="local")
    b.handle([b"wk"] + p.ready_frames({"pid": 1, "layers": ["w", "sst"], "generation": 0, "pool": "local"}))
    for rid, name in ((b"1", "sst/2024/07"), (b"2", "sst/2024/08"), (b"3", "sst/2024"), (b"4", "w/x")):
        b.handle([b"c"] + p.RenderRequest(rid, name, Tile(3, 1, 2)).frames())
    replies = {r.rid: r for r in (p.decode_reply(f[1:]) for f in sent if f[0] == b"c")}
    assert replies[b"3"].status == p.INVALID and b"takes 2 key values, not 1" in replies[b"3"].info
    assert replies[b"4"].status == p.INVALID and b"takes 0 key values" in replies[b"4"].info
    jobs = [p.decode_job(f[3:]) for f in sent if f[0] == b"wk" and f[2] == p.JOB]
    assert [j.layer for j in jobs] == ["sst/2024/07"]      # one worker: the second job waits
    assert len(b.jobs) == 2


def metatile(meta: Meta, tag: bytes):
    blobs, hashes = {}, []
    for t in meta_tiles(meta):
        data = b"sea" if t.x % 2 else tag + b" %d/%d" % (t.x, t.y)
        h = content_hash(data)
        blobs[h] = data
        hashes.append(h)
    return MetaIndex(meta, tuple(hashes), 100, 90, "png"), blobs


def test_disk_store_keeps_tile_sets_apart_and_collects_safely(tmp_path):
    s = DiskStore(tmp_path / "store")
    m = Meta(3, 0, 0, 8)
    for name in ("sst/2024/07", "sst/2024/08", "sst"):
        s.put_metatile(name, *metatile(m, name.encode()))
    assert s.pack_path("sst/2024/07", m).startswith(str(tmp_path / "store" / "tiles" / "sst" / "@2024" / "@07"))
    # a key value that looks like a zoom is no zoom of the layer
    s.put_metatile("sst/3/1", *metatile(m, b"numeric"))
    assert [i.meta for i in s.iter_indexes("sst")] == [m]
    assert sorted(s.layers()) == ["sst", "sst/2024", "sst/2024/07", "sst/2024/08", "sst/3", "sst/3/1"]
    s.collect_garbage()
    for name in ("sst/2024/07", "sst/2024/08", "sst", "sst/3/1"):
        idx, blobs = s.get_metatile(name, m)
        assert blobs[idx.tile_hash(1, 0)] == b"sea"      # the shared blob survives
        assert blobs[idx.tile_hash(0, 0)].startswith(name.encode() if name != "sst/3/1" else b"numeric")


def test_redis_store_keeps_tile_sets_apart(redis_url):
    from renderd.store.redis import RedisStore
    s = RedisStore(redis_url, prefix="tsets")
    try:
        m = Meta(3, 0, 0, 8)
        for name in ("sst/2024/07", "sst"):
            s.put_metatile(name, *metatile(m, name.encode()))
        assert s.pack_keys("sst/2024/07", m)[0] == "tsets:pk:sst/2024/07:3:0:0"
        assert [i.meta for i in s.iter_indexes("sst")] == [m]
        idx, blobs = s.get_metatile("sst/2024/07", m)
        assert blobs[idx.tile_hash(0, 0)] == b"sst/2024/07 0/0"
    finally:
        s.close()
