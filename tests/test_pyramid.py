"""A metatile from the next zoom's stored tiles (renderd.render.pyramid):
the pixels are the 2x2 averages with premultiplied alpha, encoded as the
raster renderer encodes tiles; nothing is built from a child missing or
stale; the zooms ``auto`` builds from tiles; the JOB flag that asks a
worker for it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from renderd import protocol as p
from renderd.render.pyramid import (AUTO_DEPTH, EMPTY_QUAD, children, decode, from_children, from_tiles,
                                    halve)
from renderd.render.raster_encode import TileFormat, empty
from renderd.store.disk import DiskStore
from renderd.store.index import MetaIndex, content_hash
from renderd.tilemath import Meta
from tests.fixtures.rasters import raster_layer

TS = 256


def png(rgba: np.ndarray) -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if rgba.shape[2] == 4 else "RGB"
    Image.fromarray(rgba, mode).save(out, "PNG")
    return out.getvalue()


def store_metatile(store, tileset: str, m: Meta, tiles: dict[int, bytes], data: int = 1000,
                   stale: bool = False) -> None:
    hashes = tuple(content_hash(tiles[i]) for i in range(m.n * m.n))
    store.put_metatile(tileset, MetaIndex(m, hashes, 2000, data, "png"),
                       {content_hash(b): b for b in tiles.values()})
    if stale:
        store.mark_stale(tileset, m)


def solid(rgba) -> np.ndarray:
    return np.full((TS, TS, len(rgba)), rgba, dtype=np.uint8)


def test_children_at_each_zoom():
    assert children(Meta(0, 0, 0, 1)) == [Meta(1, 0, 0, 2)]
    assert children(Meta(2, 0, 0, 4)) == [Meta(3, 0, 0, 8)]
    assert children(Meta(3, 0, 0, 8)) == [Meta(4, 0, 0, 8), Meta(4, 0, 8, 8), Meta(4, 8, 0, 8),
                                          Meta(4, 8, 8, 8)]
    assert children(Meta(5, 8, 16, 8)) == [Meta(6, 16, 32, 8), Meta(6, 16, 40, 8), Meta(6, 24, 32, 8),
                                           Meta(6, 24, 40, 8)]


def test_halve_averages_with_premultiplied_alpha():
    px = np.zeros((2, 2, 4), np.uint8)
    px[0, 0] = (255, 0, 0, 255)          # opaque red
    px[0, 1] = (0, 0, 255, 0)            # clear (its blue must not show)
    px[1, 0] = (255, 0, 0, 255)
    px[1, 1] = (0, 255, 0, 255)
    out = halve(px)
    assert out.shape == (1, 1, 4)
    r, g, b, a = (int(v) for v in out[0, 0])
    assert a == round(255 * 3 / 4) and b == 0
    assert abs(r - 170) <= 1 and abs(g - 85) <= 1        # (255+255+0)/3, 255/3 of the opaque ones


def test_a_metatile_from_its_four_children(tmp_path):
    store = DiskStore(str(tmp_path / "s"))
    lyr = raster_layer(format="png", maxzoom=8)
    m = Meta(3, 0, 0, 8)
    colours = {}
    rng = np.random.default_rng(3)
    for k, child in enumerate(children(m)):
        tiles = {}
        for i in range(64):
            c = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
            colours[(child.x0 + i // 8, child.y0 + i % 8)] = c
            tiles[i] = png(solid(c))
        store_metatile(store, "r", child, tiles, data=1000 + k)
    got = from_children(store, "r", m, lyr, memo=None)
    assert got is not None and got.data_time == 1003
    for i in range(64):
        x, y = i // 8, i % 8
        tile = decode(got.tile(i))
        quads = [colours[(2 * x + dx, 2 * y + dy)] for dx in (0, 1) for dy in (0, 1)]
        # the left half of the tile averages the left children, row by row
        top_left = np.mean([quads[0][:3]], axis=0)
        assert np.abs(tile[:TS // 2, :TS // 2, :3].astype(int) - top_left).max() <= 1
        want = np.mean([q[:3] for q in quads], axis=0)
        assert np.abs(tile[..., :3].reshape(-1, 3).mean(axis=0) - want).max() <= 1
        assert (tile[..., 3] == 255).all()
    # opaque: written without alpha, as the renderer writes an opaque tile
    assert Image.open(io.BytesIO(got.tile(0))).mode == "RGB"


def test_clear_children_make_the_renderers_empty_tile(tmp_path):
    store = DiskStore(str(tmp_path / "s"))
    for fmt in ("png", "jpeg85", "webp"):
        lyr = raster_layer(format=fmt)
        clear = empty(TS, TileFormat.parse(fmt))
        ts = f"r{fmt}"
        half = png(np.dstack([solid((10, 200, 30)), np.zeros((TS, TS, 1), np.uint8)]))
        for child in children(Meta(1, 0, 0, 2)):
            store_metatile(store, ts, child, {i: clear if i else half for i in range(16)})
        got = from_children(store, ts, Meta(1, 0, 0, 2), lyr, memo=None)
        assert all(got.tile(i) == clear for i in range(4)), fmt
        assert got.encoded == 2 and got.reused == 2     # (one tile has the half child, three not)


def test_palette_and_grey_children(tmp_path):
    store = DiskStore(str(tmp_path / "s"))
    lyr = raster_layer(format="png")
    pal = Image.new("P", (TS, TS))
    pal.putpalette([200, 100, 50] + [0] * 765)
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    grey = io.BytesIO()
    Image.new("L", (TS, TS), 77).save(grey, "PNG")
    store_metatile(store, "r", Meta(1, 0, 0, 2), {0: buf.getvalue(), 1: grey.getvalue(),
                                                 2: buf.getvalue(), 3: grey.getvalue()})
    got = from_children(store, "r", Meta(0, 0, 0, 1), lyr, memo=None)
    tile = decode(got.tile(0))
    # (x-major: children 0 and 2 are the top row, 1 and 3 the bottom one)
    assert tuple(tile[0, 0]) == (200, 100, 50, 255) and tuple(tile[-1, 0]) == (77, 77, 77, 255)


def test_nothing_is_built_from_a_child_missing_or_stale(tmp_path):
    store = DiskStore(str(tmp_path / "s"))
    lyr = raster_layer(format="png")
    m = Meta(3, 0, 0, 8)
    kids = children(m)
    tile = png(solid((1, 2, 3, 255)))
    for child in kids[:3]:
        store_metatile(store, "r", child, {i: tile for i in range(64)})
    assert from_children(store, "r", m, lyr) is None
    store_metatile(store, "r", kids[3], {i: tile for i in range(64)}, stale=True)
    assert from_children(store, "r", m, lyr) is None
    store_metatile(store, "r", kids[3], {i: tile for i in range(64)})
    assert from_children(store, "r", m, lyr) is not None


def test_which_zooms_are_built_from_tiles():
    average = raster_layer(resampling="average")
    nearest = raster_layer(resampling="nearest")
    top = 9
    assert AUTO_DEPTH == 2
    assert [z for z in range(top + 1) if from_tiles(average, z, top)] == [1, 2, 4, 5, 7, 8]
    assert [z for z in range(top + 1) if from_tiles(nearest, z, top)] == []
    assert [z for z in range(top + 1) if from_tiles(nearest, z, top, "tiles")] == list(range(top))
    assert [z for z in range(top + 1) if from_tiles(average, z, top, "sources")] == []


def test_the_job_flag():
    job = p.Job(b"7", "sst/07", Meta(4, 8, 0, 8), 5000, frozenset({"children"}))
    assert p.decode_job(job.frames()[2:]).flags == {"children"}
    plain = p.Job(b"7", "sst/07", Meta(4, 8, 0, 8), 5000)
    assert plain.frames() == [p.WORKER, p.JOB, b"7", b"sst/07", b"4/8/0", b"8", b"5000"]
    assert p.decode_job(plain.frames()[2:]).flags == frozenset()
    # a flag a worker does not know is left out; a request may ask for children
    assert p.decode_job([b"7", b"r", b"4/8/0", b"8", b"5000", b"children,sparkles"]).flags == {"children"}
    req = p.decode_render([b"1", b"r", b"4/8/0", b"2", b"1000", b"nodata,children"])
    assert req.flags == {"nodata", "children"}
    assert EMPTY_QUAD == b"\0" * 16


@pytest.mark.parametrize("flags, want", [
    ([{"children"}, {"children", "nodata"}], {"children"}),
    ([{"children"}, set()], set()),       # a user's request joined: from the sources
    ([set()], set()),
])
def test_the_broker_asks_for_children_when_every_caller_did(flags, want):
    from renderd.broker import Broker, Job as BJob, Waiter, Worker
    from renderd.tilemath import Tile
    sent = []
    b = Broker.__new__(Broker)
    b.send = sent.append
    b.clock = lambda: 0.0
    b.render_timeout = 5.0
    job = BJob(b"1", "r", Meta(4, 8, 0, 8), p.BULK, 0.0,
               [Waiter(b"c", b"1", Tile(4, 8, 0), 10.0, frozenset(f), 0.0) for f in flags])
    b.start(Worker(b"w", {}, 10.0), job)
    frames = sent[0][1:]
    assert p.decode_job(frames[2:]).flags == want
