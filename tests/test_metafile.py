"""mod_tile .meta files: layout, directory hash, robustness."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renderd.tools import metafile as mf
from renderd.errors import RenderdError


def pack_meta(z, x, y, tiles, count=64, magic=b"META", order="<"):
    """A .meta file packed by hand from the format description (not by the
    module under test): tiles is {index: bytes}."""
    head = 20 + 8 * count
    index, body = [], b""
    for i in range(count):
        data = tiles.get(i, b"")
        index.append((head + len(body), len(data)))
        body += data
    out = magic + struct.pack(f"{order}4i", count, x, y, z)
    for off, size in index:
        out += struct.pack(f"{order}2i", off, size)
    assert len(out) == head
    return out + body


def test_header_is_532_bytes_for_8x8_and_index_is_x_major():
    tiles = {(16 + dx, 40 + dy): f"tile {dx} {dy}".encode() for dx in range(8) for dy in range(8)}
    raw = mf.encode(mf.MetaFile.build(6, 16, 40, tiles))
    assert raw[:4] == b"META"
    assert struct.unpack_from("<4i", raw, 4) == (64, 16, 40, 6)
    first_data = struct.unpack_from("<i", raw, 20)[0]
    assert first_data == 532
    # entry (x&7)*8 + (y&7): the tile at dx=2, dy=5 is entry 21
    off, size = struct.unpack_from("<2i", raw, 20 + 8 * 21)
    assert raw[off:off + size] == b"tile 2 5"


def test_decode_hand_packed_file():
    raw = pack_meta(5, 8, 24, {0: b"a", 9: b"bb", 63: b"ccc"})
    m = mf.decode(raw, "x.meta")
    assert (m.z, m.x, m.y, m.n, m.compressed) == (5, 8, 24, 8, False)
    assert m.tile(8, 24) == b"a"
    assert m.tile(9, 25) == b"bb"       # entry 1*8 + 1
    assert m.tile(15, 31) == b"ccc"
    assert m.tile(8, 25) is None
    assert m.tile(100, 100) is None
    assert sum(1 for _, d in m.grid_tiles() if d) == 3


def test_low_zoom_files_have_64_entries_and_only_grid_tiles_count():
    raw = pack_meta(1, 0, 0, {0: b"00", 1: b"01", 8: b"10", 9: b"11", 2: b"off-grid"})
    m = mf.decode(raw)
    assert m.n == 8 and m.grid_side == 2
    got = {(t.x, t.y): d for t, d in m.grid_tiles()}
    assert got == {(0, 0): b"00", (0, 1): b"01", (1, 0): b"10", (1, 1): b"11"}
    assert m.outside == 1
    z0 = mf.decode(mf.encode(mf.MetaFile.build(0, 0, 0, {(0, 0): b"world"})))
    assert [(str(t), d) for t, d in z0.grid_tiles()] == [("0/0/0", b"world")]
    assert len(z0.tiles) == 64


def test_big_endian_files_are_read():
    raw = pack_meta(3, 0, 0, {5: b"be"}, order=">")
    assert mf.decode(raw).tile(0, 5) == b"be"


def test_metz_tiles_are_gunzipped_and_written_back_compressed():
    tiles = {(0, 0): b"\x89PNG" + b"x" * 100, (3, 4): b"\x89PNG" + b"y" * 50}
    meta = mf.MetaFile.build(3, 0, 0, tiles)
    raw = mf.encode(meta, compress=True)
    assert raw[:4] == b"METZ"
    assert len(raw) < len(mf.encode(meta))
    back = mf.decode(raw)
    assert back.compressed and back.tile(0, 0) == tiles[(0, 0)] and back.tile(3, 4) == tiles[(3, 4)]
    # zlib (not gzip) framing is accepted too
    z = pack_meta(3, 0, 0, {0: zlib.compress(b"plain")}, magic=b"METZ")
    assert mf.decode(z).tile(0, 0) == b"plain"
    bad = pack_meta(3, 0, 0, {0: b"not gzip at all"}, magic=b"METZ")
    with pytest.raises(mf.MetaFileError, match="corrupt compressed data in tile 3/0/0"):
        mf.decode(bad, "z.meta")


@pytest.mark.parametrize("cut", [0, 3, 19, 20, 100, 531])
def test_truncated_header(cut):
    raw = pack_meta(4, 8, 8, {0: b"data"})
    with pytest.raises(mf.TruncatedMetaFile, match=r"^f\.meta: truncated"):
        mf.decode(raw[:cut], "f.meta")


def test_truncated_tile_data():
    raw = pack_meta(4, 8, 8, {0: b"data", 63: b"0123456789"})
    with pytest.raises(mf.TruncatedMetaFile, match=r"tile 4/15/15 \(entry 63\) needs bytes up to 546"):
        mf.decode(raw[:-3], "f.meta")


@pytest.mark.parametrize("raw, message", [
    (b"MOTA" + bytes(600), "not a mod_tile metatile"),
    (pack_meta(4, 8, 8, {})[:4] + struct.pack("<i", 63) + pack_meta(4, 8, 8, {})[8:], "tile count 63"),
    (pack_meta(31, 0, 0, {}), "zoom 31 outside"),
    (pack_meta(2, 8, 0, {}), "outside the grid"),
    (pack_meta(4, 4, 0, {}), "not the first tile of a 8x8 metatile"),
    (pack_meta(4, -8, 0, {}), "outside the grid"),
])
def test_corrupt_headers(raw, message):
    with pytest.raises(mf.MetaFileError, match=message) as e:
        mf.decode(raw, "bad.meta")
    assert str(e.value).startswith("bad.meta: ")
    assert isinstance(e.value, RenderdError)


def test_corrupt_index_entries():
    raw = bytearray(pack_meta(4, 8, 8, {0: b"data"}))
    struct.pack_into("<2i", raw, 20, 532, -5)
    with pytest.raises(mf.MetaFileError, match="corrupt index: tile 4/8/8 .* size -5"):
        mf.decode(bytes(raw))
    struct.pack_into("<2i", raw, 20, 12, 4)  # points into the header
    with pytest.raises(mf.MetaFileError, match="offset 12"):
        mf.decode(bytes(raw))


def test_read_names_the_file(tmp_path):
    with pytest.raises(mf.MetaFileError, match=f"^{tmp_path}/missing.meta: cannot read"):
        mf.read(tmp_path / "missing.meta")
    (tmp_path / "t.meta").write_bytes(b"META\x40")
    with pytest.raises(mf.TruncatedMetaFile, match=f"^{tmp_path}/t.meta: truncated"):
        mf.read(tmp_path / "t.meta")


def xyz_to_meta_reference(x, y, z):
    """mod_tile's hash written out independently: five bytes, each holding
    four bits of x (high nibble) and four of y (low nibble), lowest first."""
    x, y = x - x % 8, y - y % 8
    hashes = []
    for shift in range(0, 20, 4):
        hashes.append((((x >> shift) & 15) << 4) | ((y >> shift) & 15))
    h0, h1, h2, h3, h4 = hashes
    return f"{z}/{h4}/{h3}/{h2}/{h1}/{h0}.meta"


def test_directory_hash_known_values():
    assert mf.meta_relpath(0, 0, 0) == "0/0/0/0/0/0.meta"
    assert mf.meta_relpath(10, 515, 261) == "10/0/0/33/0/0.meta"
    # Helsinki at z=18: masked x=149240=0x246F8, y=75960=0x128B8; nibbles
    # from the top: (2,1) (4,2) (6,8) (F,B) (8,8) -> 33 66 104 251 136
    assert mf.meta_relpath(18, 149243, 75966) == xyz_to_meta_reference(149243, 75966, 18)
    assert mf.meta_relpath(18, 149243, 75966) == "18/33/66/104/251/136.meta"
    assert mf.meta_relpath(5, 9, 17, hashed=False) == "5/8/16.meta"
    assert mf.meta_relpath(5, 9, 17, options="de") == "5/0/0/0/1/128.de.meta"
    assert str(mf.meta_path("/srv/tiles", 5, 9, 17, style="osm")) == "/srv/tiles/osm/5/0/0/0/1/128.meta"


@given(z=st.integers(0, 20), data=st.data())
def test_directory_hash_matches_reference(z, data):
    x = data.draw(st.integers(0, (1 << z) - 1))
    y = data.draw(st.integers(0, (1 << z) - 1))
    rel = mf.meta_relpath(z, x, y)
    assert rel == xyz_to_meta_reference(x, y, z)
    assert mf.path_matches("/a/osm/" + rel, z, x - x % 8, y - y % 8)
    assert mf.path_matches(rel.split("/", 1)[1], z, x - x % 8, y - y % 8)
    assert mf.path_matches("/t/" + mf.meta_relpath(z, x, y, hashed=False), z, x - x % 8, y - y % 8)
    if z >= 4:
        assert not mf.path_matches("/a/osm/" + rel, z, (x - x % 8) ^ 8, y - y % 8)
        assert not mf.path_matches(f"/a/osm/{z + 1}/" + rel.split("/", 1)[1], z, x - x % 8, y - y % 8)


def test_write_is_atomic_and_sets_mtime(tmp_path):
    m = mf.MetaFile.build(3, 0, 0, {(1, 2): b"t"})
    path = mf.write(mf.meta_path(tmp_path, 3, 1, 2, style="s"), m, mtime=1_500_000_000)
    assert path == tmp_path / "s/3/0/0/0/0/0.meta"
    assert os.stat(path).st_mtime == 1_500_000_000
    assert os.listdir(path.parent) == ["0.meta"]
    assert mf.read(path).tile(1, 2) == b"t"


tile_bytes = st.binary(min_size=1, max_size=40)


@given(z=st.integers(3, 12), data=st.data(), compress=st.booleans())
@settings(max_examples=60)
def test_roundtrip(z, data, compress):
    x0 = data.draw(st.integers(0, (1 << z) // 8 - 1)) * 8
    y0 = data.draw(st.integers(0, (1 << z) // 8 - 1)) * 8
    tiles = data.draw(st.dictionaries(st.tuples(st.integers(x0, x0 + 7), st.integers(y0, y0 + 7)),
                                      tile_bytes, max_size=64))
    back = mf.decode(mf.encode(mf.MetaFile.build(z, x0, y0, tiles), compress=compress))
    assert {(t.x, t.y): d for t, d in back.grid_tiles() if d is not None} == tiles


@given(pos=st.integers(0, 700), value=st.integers(0, 255), cut=st.integers(0, 800))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_damage_raises_only_metafile_errors(pos, value, cut):
    raw = bytearray(pack_meta(4, 8, 8, {0: b"a" * 40, 17: b"b" * 60, 63: b"c" * 50}))
    if pos < len(raw):
        raw[pos] = value
    raw = bytes(raw[:cut])
    try:
        m = mf.decode(raw, "d.meta")
    except mf.MetaFileError as e:
        assert str(e).startswith("d.meta: ")
    else:
        assert len(m.tiles) == m.n * m.n
