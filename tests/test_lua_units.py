"""The pure Lua modules (renderd.json, renderd.path, renderd.index) run
under the plain Lua 5.1 interpreter, with Python as the oracle."""

from __future__ import annotations

import json
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


def lua_str(s: str) -> str:
    return "'" + "".join(f"\\{b}" for b in s.encode()) + "'"


# --- json ------------------------------------------------------------------------

DUMP = r"""
local json = require "renderd.json"
local function dump(v)
  local t = type(v)
  if v == json.null then return "null" end
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local out = {}
    for _, k in ipairs(keys) do out[#out + 1] = tostring(k) .. "=" .. dump(v[k]) end
    return "{" .. table.concat(out, ",") .. "}"
  elseif t == "string" then
    return string.format("%q", v)
  end
  return tostring(v)
end
"""


@pytest.mark.parametrize("text, want", [
    ('{"a": 1, "b": [true, false, null], "c": "x\\ny\\u00e9\\ud83d\\ude00"}',
     '{a=1,b={1=true,2=false,3=null},c="x\\\ny\u00e9\U0001F600"}'),
    ('  [1.5, -2, 3e2, "\\"\\\\/"]  ', '{1=1.5,2=-2,3=300,4="\\"\\\\/"}'),
    ("{}", "{}"),
])
def test_json_decode(text, want):
    out = run_lua(DUMP + f"print(dump(json.decode({lua_str(text)})))")
    assert out.strip() == want


@pytest.mark.parametrize("text", ['{"a": 1', '{"a" 1}', "[1,]", '"abc', "tru", "{} x", "", '{"a":01x}'])
def test_json_rejects(text):
    out = run_lua(DUMP + f"local v, err = json.decode({lua_str(text)}) print(v == nil, err)")
    ok, _, err = out.strip().partition("\t")
    assert ok == "true" and "byte" in err, out


def test_json_real_config_roundtrip():
    cfg = {"broker": "ipc:///run/x.sock", "timeout": 30, "store": {"kind": "redis", "password": None},
           "layers": [{"name": "world", "minzoom": 0, "maxzoom": 12, "metatile": 8}]}
    out = run_lua(DUMP + f"print(dump(json.decode({lua_str(json.dumps(cfg))})))")
    assert out.strip() == ('{broker="ipc:///run/x.sock",layers={1={maxzoom=12,metatile=8,minzoom=0,'
                           'name="world"}},store={kind="redis",password=null},timeout=30}')


# --- path ---------------------------------------------------------------------------

PATH = r"""
local path = require "renderd.path"
local layers = { world = { name = "world", minzoom = 0, maxzoom = 20, metatile = 8, ext = "png" },
                 small = { name = "small", minzoom = 3, maxzoom = 5, metatile = 4, ext = "jpg" } }
for line in io.lines() do
  local t, status, msg = path.parse(line, layers)
  if t then
    print(table.concat({t.layer.name, t.z, t.x, t.y, t.n, t.x0, t.y0, t.mx, t.my, t.i}, " "))
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
    from renderd.store.disk import encode_pack
    meta = Meta(2, 0, 0, 4)
    tiles = [b"tile %d " % i + b"x" * i for i in range(4)]
    hashes = [content_hash(t) for t in tiles]
    # tile 0 twice and tile 3 once in the pool; tiles 1 and 2 in the pack
    picks = [0, 1, -1, 2, 0, 3, 1] + [-1] * 9
    idx = MetaIndex(meta, tuple(EMPTY if p < 0 else hashes[p] for p in picks), 1763745600, 1763745000)
    raw = encode_pack(idx, {hashes[1]: tiles[1], hashes[2]: tiles[2]})
    code = f"""
local index = require "renderd.index"
local pack = require "renderd.pack"
local raw = {lua_str(raw.decode("ascii"))}
local idx = assert(pack.index(raw))
print(idx == raw:sub(1, 64 + 33 * 16), index.check(idx, 2, 0, 0, 4) ~= nil)
local out = {{}}
for i = 0, 15 do
  local b = pack.tile(raw, 4, i)
  out[#out + 1] = b == false and "pool" or b
end
print(table.concat(out, ","))
local inline, pooled = pack.tiles(raw, 4)
local names = {{}}
for h, b in pairs(inline) do names[#names + 1] = h .. "=" .. b end
table.sort(names)
print(table.concat(names, ","))
print(table.concat(pooled, ","))
local function corrupt(r) return select(2, pack.index(r)) or select(2, pack.tile(r, 4, 1))
  or select(3, pack.tiles(r, 4)) end
local table_at = 64 + 33 * 16
print(corrupt(raw:sub(1, table_at + 20 * 16 - 1)))
print(corrupt(raw:sub(1, -2)))
print(corrupt(raw:sub(1, table_at + 20) .. "000000000x 00000000\\n" .. raw:sub(table_at + 41)))
print(corrupt(raw:sub(1, table_at + 20) .. "0000000010 00000001\\n" .. raw:sub(table_at + 41)))
print(select(3, pack.tiles(raw:sub(1, table_at + 40) .. raw:sub(table_at + 21, table_at + 40)
  .. raw:sub(table_at + 61), 4)))
print(pack.index("RPYI1 0 02"))
"""
    lines = run_lua(code).splitlines()
    assert lines[0] == "true\ttrue"
    # an empty entry's location is 0/0 too: index.entry tells them apart
    assert lines[1] == ",".join(tiles[p].decode() if p in (1, 2) else "pool" for p in picks)
    assert lines[2] == ",".join(sorted(f"{hashes[i]}={tiles[i].decode()}" for i in (1, 2)))
    assert lines[3] == f"{hashes[0]},{hashes[3]}"
    assert lines[4] == "truncated pack"
    assert lines[5].startswith("location ") and lines[5].endswith("of entry 3 is outside the pack's tiles")
    assert lines[6] == "corrupt location of entry 1"
    assert lines[7] == "location 10/1 of entry 1 is outside the pack's tiles"
    assert lines[8] == "empty entry 2 has a location"
    assert lines[9] == "nil\tnot a metatile pack"
