"""coverage, stats, export and expire against real stores (a directory and a
real redis-server), on metatiles written with known contents."""

from __future__ import annotations

import io
import json
import math
import sqlite3

import mercantile
import pytest
from pmtiles.reader import MmapSource, Reader, all_tiles

from renderd.config import parse
from renderd.errors import RenderdError, UsageError
from renderd.store.index import EMPTY, MetaIndex, content_hash
from renderd.tilemath import Meta, meta_tiles
from renderd.tools.area import Area
from renderd.tools.coverage import coverage
from renderd.tools.expire import ExpireSummary, expand, expire, read_tiles
from renderd.tools.export import export
from renderd.tools.stats import report, stats, table

LAYER = "t"


@pytest.fixture(params=["disk", "redis", "cluster"])
def store(request, tmp_path):
    if request.param == "disk":
        from renderd.store.disk import DiskStore
        s = DiskStore(str(tmp_path / "store"))
    elif request.param == "cluster":
        from renderd.store.redis_cluster import RedisClusterStore
        s = RedisClusterStore(request.getfixturevalue("redis_cluster_url"), prefix="tt")
    else:
        from renderd.store.redis import RedisStore
        s = RedisStore(request.getfixturevalue("redis_url"), prefix="tt")
    yield s
    s.close()


def blob(tag: str, size: int) -> bytes:
    """Distinct contents of an exact size."""
    head = f"\x89PNG{tag}:".encode()
    return head + b"x" * (size - len(head))


def put(store, meta: Meta, contents: list[bytes | None], rendered: int = 1_700_000_000,
        stale: bool = False) -> MetaIndex:
    hashes, blobs = [], {}
    for c in contents:
        if c is None:
            hashes.append(EMPTY)
        else:
            h = content_hash(c)
            hashes.append(h)
            blobs[h] = c
    idx = MetaIndex(meta, tuple(hashes), rendered, rendered, "png", stale)
    store.put_metatile(LAYER, idx, blobs)
    return idx


def lon(z, x):
    return x / (1 << z) * 360.0 - 180.0


def lat(z, y):
    return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / (1 << z)))))


def tiles_bbox(z, x0, y0, x1, y1, inset=1e-6) -> str:
    """A --bbox covering exactly tiles x0..x1, y0..y1 (inclusive)."""
    return f"{lon(z, x0) + inset},{lat(z, y1 + 1) + inset},{lon(z, x1 + 1) - inset},{lat(z, y0) - inset}"


# --- coverage --------------------------------------------------------------------

def test_coverage_rfc122_worked_example(store):
    """A region of 14 x 17 = 238 tiles at zoom 10 with 43 of them cached:
    coverage 43/238 = 0.1807, as in RFC 122's example."""
    z = 10
    area = Area.from_bbox(tiles_bbox(z, 512, 300, 525, 316))
    sea = blob("sea", 100)
    # metatile (512, 296): all 64 stored; its rows 300-303 (32 tiles) are in the region
    put(store, Meta(z, 512, 296, 8), [sea] * 64)
    # metatile (520, 304): region part is x 520-525, y 304-311 (48 tiles); 11 of them stored
    contents: list[bytes | None] = [None] * 64
    stored = [(520 + i % 6, 304 + i // 6) for i in range(11)]
    for k, (x, y) in enumerate(stored):
        contents[(x - 520) * 8 + (y - 304)] = blob(f"t{k}", 300)
    put(store, Meta(z, 520, 304, 8), contents)
    # a stored metatile outside the region counts for nothing
    put(store, Meta(z, 600, 600, 8), [blob("far", 5000)] * 64)

    rep = coverage(store, LAYER, area, (z, z))
    assert (rep["cached"], rep["required"], rep["coverage"]) == (43, 238, 0.1807)
    [lvl] = rep["zoom_levels"]
    assert (lvl["level"], lvl["cached"], lvl["required"], lvl["coverage"]) == (10, 43, 238, 0.1807)
    per = {(m["x"], m["y"]): (m["cached"], m["required"]) for m in lvl["metatiles"]}
    assert per == {(512, 296): (32, 32), (520, 296): (0, 24), (512, 304): (0, 64),
                   (520, 304): (11, 48), (512, 312): (0, 40), (520, 312): (0, 30)}
    # sizes from the stored tiles of the metatiles involved: 64 x 100 + 11 x 300 bytes
    avg = (64 * 100 + 11 * 300) / 75
    assert rep["sizes"] == {"average_tile_size": round(avg, 1),
                            "estimated_full_size": round(avg * 238),
                            "estimated_missing_size": round(avg * 195),
                            "stored_size": 100 + 11 * 300}
    box = rep["region"]["bounding_box"]
    assert box[0] == pytest.approx(0.0, abs=1e-5) and rep["region"]["geometry"]["type"] == "Polygon"
    m0 = next(m for m in lvl["metatiles"] if (m["x"], m["y"]) == (512, 296))
    b = mercantile.bounds(512, 296, 10)
    assert m0["bounding_box"][0] == pytest.approx(b.west) and m0["bounding_box"][3] == pytest.approx(b.north)
    json.dumps(rep)  # serialisable as it is

    short = coverage(store, LAYER, area, (z, z), short=True)
    assert {(m["x"], m["y"]) for m in short["zoom_levels"][0]["metatiles"]} == {(512, 296), (520, 304)}
    assert short["coverage"] == 0.1807 and short["required"] == 238


def test_coverage_of_empty_store_and_stale_flag(store):
    area = Area.from_bbox(tiles_bbox(3, 0, 0, 7, 7))
    rep = coverage(store, LAYER, area, (2, 3))
    assert rep["cached"] == 0 and rep["required"] == 16 + 64 and rep["coverage"] == 0.0
    assert rep["sizes"]["average_tile_size"] is None and rep["sizes"]["stored_size"] == 0
    put(store, Meta(3, 0, 0, 8), [blob("a", 50)] * 64, stale=True)
    rep = coverage(store, LAYER, area, (3, 3))
    assert rep["coverage"] == 1.0 and rep["zoom_levels"][0]["metatiles"][0]["stale"] is True


# --- stats --------------------------------------------------------------------

def stats_fixture(store) -> None:
    sea = blob("sea", 100)
    a, b, c, d = (blob(k, 200) for k in "abcd")
    put(store, Meta(2, 0, 0, 4), [sea] * 12 + [a, b, c, d])
    put(store, Meta(3, 0, 0, 8), [sea] * 60 + [a, b, None, None])


def test_stats_on_a_known_fixture(store):
    stats_fixture(store)
    rows, total = stats(store, LAYER, range(1, 4))
    got = report(LAYER, rows, total)
    assert got["zooms"] == [
        {"zoom": 1, "metatiles": 0, "tiles": 0, "unique_tiles": 0, "bytes": 0,
         "bytes_deduplicated": 0, "duplicate_share": 0.0},
        {"zoom": 2, "metatiles": 1, "tiles": 16, "unique_tiles": 5, "bytes": 2000,
         "bytes_deduplicated": 900, "duplicate_share": 0.6875},
        {"zoom": 3, "metatiles": 1, "tiles": 62, "unique_tiles": 3, "bytes": 6400,
         "bytes_deduplicated": 500, "duplicate_share": 0.9516},
    ]
    assert got["total"] == {"metatiles": 2, "tiles": 78, "unique_tiles": 5, "bytes": 8400,
                            "bytes_deduplicated": 900, "duplicate_share": 0.9359}
    lines = table(LAYER, rows, total)
    assert lines[3].split() == ["2", "1", "16", "5", "68.8%", "2000", "900"]
    assert lines[-1].split() == ["total", "2", "78", "5", "93.6%", "8400", "900"]


# --- export --------------------------------------------------------------------

def layer_cfg(ext: str = "png"):
    fmt = "jpeg80" if ext == "jpg" else "png"
    return parse({"layer": [{"name": LAYER, "kind": "raster", "collection": "t", "format": fmt,
                             "maxzoom": 12,
                             "attribution": "test data"}]}, check_files=False).layer(LAYER)


def fill(store, area: Area, zooms, missing: set[Meta] = frozenset(), empty_every: int = 0) -> dict:
    """Store every metatile of the area (but ``missing``); returns tile -> bytes."""
    sea = blob("sea", 120)
    expect = {}
    for z in range(zooms[0], zooms[1] + 1):
        for m in area.metatiles(z):
            if m in missing:
                continue
            contents = []
            for i, t in enumerate(meta_tiles(m)):
                if empty_every and i % empty_every == 0:
                    contents.append(None)
                elif (t.x + t.y) % 3 == 0:
                    contents.append(blob(f"{t.z}/{t.x}/{t.y}", 150 + t.x % 50))
                else:
                    contents.append(sea)
            put(store, m, contents)
            mask = area.tile_mask(m)
            for i, t in enumerate(meta_tiles(m)):
                if mask[i] and contents[i] is not None:
                    expect[(t.z, t.x, t.y)] = contents[i]
    return expect


@pytest.mark.parametrize("fmt", ["mbtiles", "pmtiles"])
def test_export_round_trips_every_tile(store, tmp_path, fmt):
    area = Area.from_geojson_text(json.dumps({"type": "Polygon", "coordinates": [
        [[20, 55], [30, 55], [32, 62], [24, 66], [18, 61], [20, 55]]]}))
    expect = fill(store, area, (2, 8), empty_every=13)
    out = tmp_path / f"x.{fmt}"
    s = export(store, layer_cfg(), area, (2, 8), str(out))
    uniq = {content_hash(v): len(v) for v in expect.values()}
    assert (s.tiles, s.missing) == (len(expect), 0) and s.empty > 0
    assert s.unique_tiles == len(uniq) and s.unique_bytes == sum(uniq.values())
    assert s.tile_bytes == sum(len(v) for v in expect.values())
    assert s.file_size == out.stat().st_size
    assert not list(tmp_path.glob("*.part-*"))
    if fmt == "mbtiles":
        db = sqlite3.connect(out)
        got = {(z, x, (1 << z) - 1 - row): bytes(data)
               for z, x, row, data in db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")}
        meta = dict(db.execute("SELECT name, value FROM metadata"))
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == len(uniq)
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x4D504258
        assert db.execute("SELECT COUNT(*), SUM(LENGTH(tile_data)) FROM tiles").fetchone() == \
            (len(expect), s.tile_bytes)
        assert (meta["name"], meta["format"], meta["minzoom"], meta["maxzoom"]) == (LAYER, "png", "2", "8")
        w, so, e, n = (float(v) for v in meta["bounds"].split(","))
        assert (w, so, e, n) == pytest.approx((18, 55, 32, 66), abs=1e-6)
        cx, cy, cz = meta["center"].split(",")
        assert 18 <= float(cx) <= 32 and 55 <= float(cy) <= 66 and cz == "2"
        assert meta["attribution"] == "test data"
        db.close()
    else:
        with open(out, "rb") as f:
            src = MmapSource(f)
            r = Reader(src)
            h = r.header()
            assert h["clustered"] and h["tile_contents_count"] == len(uniq)
            assert h["addressed_tiles_count"] == len(expect)
            assert (h["min_zoom"], h["max_zoom"]) == (2, 8)
            assert h["tile_type"].name == "PNG" and h["tile_compression"].name == "NONE"
            got = {(z, x, y): bytes(d) for (z, x, y), d in all_tiles(src)}
            assert r.get(8, 145, 72) == expect.get((8, 145, 72))
            assert r.metadata()["name"] == LAYER
    assert got == expect


@pytest.mark.parametrize("fmt", ["mbtiles", "pmtiles"])
def test_export_counts_missing_tiles(store, tmp_path, fmt):
    bbox = tiles_bbox(5, 8, 8, 20, 13)
    area = Area.from_bbox(bbox)
    gone = Meta(5, 16, 8, 8)
    expect = fill(store, area, (5, 5), missing={gone})
    s = export(store, layer_cfg(), area, (5, 5), str(tmp_path / f"m.{fmt}"))
    assert s.missing == sum(area.tile_mask(gone)) == 5 * 6
    assert s.tiles == len(expect) == 13 * 6 - 30


def test_export_refuses_nothing_and_bad_names(store, tmp_path):
    area = Area.from_bbox("0,0,1,1")
    (tmp_path / "out").mkdir()
    with pytest.raises(RenderdError, match="nothing to export"):
        export(store, layer_cfg(), area, (3, 4), str(tmp_path / "out" / "e.pmtiles"))
    assert not list((tmp_path / "out").iterdir())
    with pytest.raises(UsageError, match=r"\.mbtiles or \.pmtiles"):
        export(store, layer_cfg(), area, (3, 4), str(tmp_path / "e.zip"))
    with pytest.raises(UsageError, match="does not exist"):
        export(store, layer_cfg(), area, (3, 4), str(tmp_path / "no" / "e.mbtiles"))


# --- expire --------------------------------------------------------------------

def test_read_tiles_counts_malformed_lines():
    s = ExpireSummary(LAYER, "dirty", (0, 5))
    text = "3/1/2\n\n# comment\n 3 / 1 / 2 \n4/16/0\n3/8/0\nfoo\n1/2\n-1/0/0\n12/1/2/3\n"
    tiles = read_tiles(io.StringIO(text), s)
    assert {tuple(t) for t in tiles} == {(3, 1, 2)}
    assert (s.lines, s.malformed, s.tiles) == (8, 6, 1)
    assert s.bad_examples[0] == "line 5: '4/16/0'" and len(s.bad_examples) == 5


def test_expand_parents_and_children():
    from renderd.tilemath import Tile
    t = {Tile(4, 9, 5)}
    assert expand(t, 2) == {Meta(2, 0, 0, 4)}
    assert expand(t, 4) == {Meta(4, 8, 0, 8)}
    assert expand(t, 5) == {Meta(5, 16, 8, 8)}
    assert expand(t, 8) == {Meta(8, x, y, 8) for x in (144, 152) for y in (80, 88)}
    assert expand(t, 8, scan_limit=3) is None


def seed_grid(store, zooms, area):
    for z in range(zooms[0], zooms[1] + 1):
        for m in area.metatiles(z):
            put(store, m, [blob(f"{m}", 80)] * (m.n * m.n))


def overlapping(m: Meta, t) -> bool:
    """Independent check: do the metatile's and the tile's areas overlap (in tiles of zoom 20)?"""
    s_m, s_t = 20 - m.z, 20 - t.z
    ax0, ay0, ax1, ay1 = m.x0 << s_m, m.y0 << s_m, (m.x0 + m.n) << s_m, (m.y0 + m.n) << s_m
    bx0, by0, bx1, by1 = t.x << s_t, t.y << s_t, (t.x + 1) << s_t, (t.y + 1) << s_t
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


@pytest.mark.parametrize("mode", ["dirty", "delete"])
@pytest.mark.parametrize("scan_limit", [200_000, 1])
def test_expire_marks_or_deletes_exactly_the_overlapping_metatiles(store, mode, scan_limit):
    from renderd.tilemath import Tile
    area = Area.from_bbox(tiles_bbox(6, 30, 20, 45, 30))
    seed_grid(store, (0, 9), area)
    before = {idx.meta for idx in store.iter_indexes(LAYER)}
    lines = ["7/70/50", "7/70/50", "9/300/170", "bad line", "5/0/0"]
    s = expire(store, LAYER, lines, (2, 9), mode, scan_limit=scan_limit)
    listed = [Tile(7, 70, 50), Tile(9, 300, 170), Tile(5, 0, 0)]
    hit = {m for m in before if m.z >= 2 and any(overlapping(m, t) for t in listed)}
    assert hit and len(hit) < len(before)
    after = {idx.meta: idx for idx in store.iter_indexes(LAYER)}
    if mode == "dirty":
        assert set(after) == before
        assert {m for m, idx in after.items() if idx.stale} == hit
    else:
        assert set(after) == before - hit
    assert (s.lines, s.malformed, s.tiles, s.metatiles) == (5, 1, 3, len(hit))
    if scan_limit > 1:
        assert s.not_stored > 0  # the expansion reaches metatiles never stored
