"""The pure Lua modules (renderd.path, renderd.index, renderd.pack) run
under the plain Lua 5.1 interpreter, with Python as the oracle."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from renderd.store.index import EMPTY, MetaIndex, content_hash
from renderd.tilemath import Meta, metatile_of, tile_index

ROOT = Path(__file__).resolve().parents[1]
LUA = shutil.which("lua5.1") or shutil.which("luajit")

pytestmark = pytest.mark.skipif(LUA is None, reason="no Lua 5.1 interpreter")


def run_lua(code: str) -> str:
    r = subprocess.run([LUA, "-e", f'package.path = "{ROOT}/lua/?.lua;" .. package.path', "-"],
                       input=code, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def lua_str(s: str | bytes) -> str:
    return "'" + "".join(f"\\{b}" for b in (s if isinstance(s, bytes) else s.encode())) + "'"


# --- path ---------------------------------------------------------------------------

PATH = r"""
local path = require "renderd.path"
local layers = { world = { name = "world", minzoom = 0, maxzoom = 20, metatile = 8, ext = "png", keys = {},
                           scale_set = { [1] = true, [2] = true } },
                 small = { name = "small", minzoom = 3, maxzoom = 5, metatile = 4, ext = "jpg", keys = {} },
                 sst = { name = "sst", minzoom = 0, maxzoom = 6, metatile = 8, ext = "png",
                         keys = { "year", "month" } } }
for line in io.lines() do
  local t, status, msg = path.parse(line, layers)
  if t then
    print(table.concat({t.tileset, t.z, t.x, t.y, t.n, t.x0, t.y0, t.mx, t.my, t.i}, " "))
  else
    print(status .. " " .. msg)
  end
end
"""


def parse_many(uris: list[str]) -> list[str]:
    r = subprocess.run([LUA, "-e", f'package.path = "{ROOT}/lua/?.lua;" .. package.path', "-e", PATH],
                       input="\n".join(uris) + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_path_metatile_math_matches_python():
    cases = [("world", z, x, y) for z, x, y in [(0, 0, 0), (1, 1, 1), (2, 3, 1), (3, 7, 7), (4, 9, 15),
                                                 (12, 4095, 0), (20, 1048575, 524287), (13, 4100, 8191)]]
    cases += [("small", 3, 5, 6), ("small", 5, 31, 2)]
    exts = {"world": "png", "small": "jpg"}
    got = parse_many([f"/tiles/{l}/{z}/{x}/{y}.{exts[l]}" for l, z, x, y in cases])
    for (layer, z, x, y), line in zip(cases, got):
        m = metatile_of(z, x, y, 8 if layer == "world" else 4)
        want = f"{layer} {z} {x} {y} {m.n} {m.x0} {m.y0} {m.mx} {m.my} {tile_index(m, x, y)}"
        assert line == want


def test_path_statuses():
    uris = {
        "/tiles/world/1/0/0.png?x=1": "world 1 0 0",
        "/tiles/small/2/0/0.jpg": "404 zoom outside the layer",
        "/tiles/small/3/0/0.png": "404 wrong extension",
        "/tiles/world/21/0/0.png": "404 zoom outside the layer",
        "/tiles/world/3/8/0.png": "404 tile outside the grid",
        "/tiles/world/3/0/8.png": "404 tile outside the grid",
        "/tiles/World/3/0/0.png": "404 unknown layer",
        "/tiles/world/3/0/0.png.png": "400 malformed tile path",
        "/tiles/world/3/0/ 0.png": "400 malformed tile path",
        "/tiles/world/3/0/0.png#x": "400 malformed tile path",
        "/tiles/world/003/0/0.png": "400 malformed tile path",
        "/tiles/world/03/0/0.png": "world 3 0 0",
        "/tiles/world/3/00000000000/0.png": "400 malformed tile path",
        "/tile/world/3/0/0.png": "400 not a tile path",
        "/tiles/world/3/0/0.png" + "?" + "a" * 2100: "400 URI too long",
        "/tiles/world/3/0/" + "1" * 250 + ".png": "400 URI too long",
        # a layer with keys: one value segment per key
        "/tiles/sst/2024/07/3/1/2.png": "sst/2024/07 3 1 2",
        "/tiles/sst/1990/v1.2_x-y/0/0/0.png?t=1": "sst/1990/v1.2_x-y 0 0 0",
        "/tiles/sst/2024/3/1/2.png": "400 wrong number of key values",
        "/tiles/sst/3/1/2.png": "400 wrong number of key values",
        "/tiles/sst/a/b/c/3/1/2.png": "400 wrong number of key values",
        "/tiles/world/2024/3/1/2.png": "400 malformed tile path",
        "/tiles/sst/2024/./3/1/2.png": "400 malformed tile path",
        "/tiles/sst/2024/../3/1/2.png": "400 malformed tile path",
        "/tiles/sst/2024//3/1/2.png": "400 malformed tile path",
        "/tiles/sst/20%32/07/3/1/2.png": "400 malformed tile path",
        "/tiles/sst/ab3/1/2.png": "400 malformed tile path",
        "/tiles/sst/" + "v" * 65 + "/07/3/1/2.png": "400 malformed tile path",
        "/tiles/sst/2024/07/7/1/2.png": "404 zoom outside the layer",
        # HiDPI tiles: a tile set of their own, where the layer has the scale
        "/tiles/world/3/1/2@2x.png": "world@2x 3 1 2",
        "/tiles/world/3/1/2@2x.png?v=3": "world@2x 3 1 2",
        "/tiles/world/3/1/2@3x.png": "404 scale not configured",
        "/tiles/small/3/1/2@2x.jpg": "404 scale not configured",
        "/tiles/world/3/1/2@1x.png": "400 malformed tile path",
        "/tiles/world/3/1/2@2x@2x.png": "400 malformed tile path",
        "/tiles/world/3/1@2x/2.png": "400 malformed tile path",
        "/tiles/world@2x/3/1/2.png": "400 malformed tile path",
        "/tiles/world/3/1/2@22x.png": "400 malformed tile path",
        "/tiles/world/3/8/2@2x.png": "404 tile outside the grid",
    }
    got = parse_many(list(uris))
    for (uri, want), line in zip(uris.items(), got):
        assert line.startswith(want), (uri, line)


# --- index ----------------------------------------------------------------------------

def test_index_reader_matches_python():
    meta = Meta(9, 16, 504, 8)
    hashes = tuple(EMPTY if i % 5 == 0 else f"{i % 7:032x}" for i in range(64))
    idx = MetaIndex(meta, hashes, 1763745600, 1763745000, "jpg", stale=True)
    raw = idx.encode().decode()
    code = f"""
local index = require "renderd.index"
local raw = {lua_str(raw)}
local h = assert(index.check(raw, 9, 16, 504, 8))
print(h.stale, h.z, h.x0, h.y0, h.n, h.rendered, h.data, h.ext)
local e = {{}}
for i = 0, 63 do e[#e + 1] = index.entry(raw, i) or "-" end
print(table.concat(e, ","))
print(table.concat(index.unique(raw, 8), ","))
print(index.check(raw, 9, 16, 496, 8))
print(index.header(raw:sub(1, -2)))
print(index.header("garbage"))
"""
    lines = run_lua(code).splitlines()
    assert lines[0].split("\t") == ["true", "9", "16", "504", "8", "1763745600", "1763745000", "jpg"]
    assert lines[1].split(",") == [h if h != EMPTY else "-" for h in hashes]
    assert lines[2].split(",") == idx.unique()
    assert lines[3] == "nil\tindex is for metatile 9/16/504"
    assert lines[4] == "nil\ttruncated metatile index"
    assert lines[5] == "nil\tnot a metatile index"


# --- pack ------------------------------------------------------------------------------

def test_pack_reader_matches_python():
    from renderd.errors import StoreError
    from renderd.store.pack import decode_pack, encode_pack
    meta = Meta(2, 0, 0, 4)
    tiles = [b"tile %d " % i + b"x" * i for i in range(4)]
    hashes = [content_hash(t) for t in tiles]
    # tile 0 twice and tile 3 once in the pool; tiles 1 and 2 in the pack
    picks = [0, 1, -1, 2, 0, 3, 1] + [-1] * 9
    idx = MetaIndex(meta, tuple(EMPTY if p < 0 else hashes[p] for p in picks), 1763745600, 1763745000,
                    "png", True)
    raw = encode_pack(idx, {hashes[1]: tiles[1], hashes[2]: tiles[2]})
    # records 1 to 4 are tiles 0 to 3, at byte 96 + 24 (k - 1); the head ends at 192
    record = [None] + [96 + 24 * k for k in range(4)]

    def damaged(at: int, data: bytes) -> bytes:
        return raw[:at] + data + raw[at + len(data):]
    cases = [  # (pack, entry read by pack.tile)
        (raw[:191], 0),
        (raw[:-1], 3),                                       # tile 2, the last kept in the pack, cut
        (damaged(64 + 2 * 1, b"\x05\x00"), 1),               # entry 1 names record 5
        (damaged(64 + 2 * 1, b"\x03\x00\x00\x00\x02\x00"), 1),  # record 3 named before record 2
        (damaged(record[1], bytes(16)), 0),                  # record 1 without a hash
        (damaged(record[3], raw[record[2]:record[2] + 16]), 0),  # records 2 and 3: one hash
        (damaged(64 + 2 * 5, b"\x00\x00"), 0),               # record 4 named by no entry
        (damaged(57, b" +04"), 0),
        (damaged(57, b"0017"), 0),                           # more records than tiles
    ]
    code = f"""
local pack = require "renderd.pack"
local raw = {lua_str(raw)}
local h = assert(pack.header(raw, 2, 0, 0, 4))
print(h.stale, h.z, h.x0, h.y0, h.n, h.rendered, h.data, h.ext, h.count, h.head)
local out = {{}}
for i = 0, 15 do
  local hash, b = pack.tile(raw, h, i)
  out[#out + 1] = (hash or "-") .. "=" .. (b == false and "pool" or b or "")
end
print(table.concat(out, ","))
local idx, inline, pooled = pack.decode(raw, h)
print(idx == {lua_str(idx.encode())})
local names = {{}}
for hash, b in pairs(inline) do names[#names + 1] = hash .. "=" .. b end
table.sort(names)
print(table.concat(names, ","))
print(table.concat(pooled, ","))
local function first_error(r, i)
  local hh, err = pack.header(r, 2, 0, 0, 4)
  if not hh then return err end
  local hash, e = pack.tile(r, hh, i)
  if hash == nil then return "tile: " .. e end
  local ok, e2 = pack.decode(r, hh)
  return ok and "ok" or "decode: " .. e2
end
{"".join(f"print(first_error({lua_str(r)}, {i}))" + chr(10) for r, i in cases)}
print(pack.header(raw, 2, 4, 0, 4))
print(pack.header({lua_str(idx.encode())}, 2, 0, 0, 4))
print(pack.header("garbage"))
"""
    lines = run_lua(code).splitlines()
    assert lines[0].split("\t") == ["true", "2", "0", "0", "4", "1763745600", "1763745000", "png", "4", "192"]
    assert lines[1].split(",") == [
        "-=" if p < 0 else f"{hashes[p]}=" + (tiles[p].decode() if p in (1, 2) else "pool") for p in picks]
    assert lines[2] == "true"  # the ASCII index, as renderd.index and the hot cache read it
    assert lines[3] == ",".join(sorted(f"{hashes[i]}={tiles[i].decode()}" for i in (1, 2)))
    assert lines[4] == f"{hashes[0]},{hashes[3]}"
    off3 = 192 + len(tiles[1])
    assert lines[5:14] == [
        "truncated pack",
        f"tile: location {off3}/{len(tiles[2])} of record 3 is outside the pack's tiles",
        "tile: entry 1 names record 5 of 4",
        "decode: entry 1 names record 3 before record 2",
        "tile: record 1 has no hash",
        "decode: two records have one hash",
        "decode: a record is named by no entry",
        "corrupt count of distinct tiles",
        "corrupt count of distinct tiles",
    ]
    assert lines[14] == "nil\tpack is of metatile 2/0/0 of size 4"
    assert lines[15] == "nil\ta pack of an earlier format (RPYI1)\ttrue"
    assert lines[16] == "nil\tnot a metatile pack\tfalse"
    for r, _ in cases:  # the Python reader refuses the same packs
        with pytest.raises(StoreError):
            decode_pack(r, len(r))
