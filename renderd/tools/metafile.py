"""mod_tile ``.meta`` files: read them (``import-meta``), write them (tests,
benchmarks).

A ``.meta`` file holds one metatile of already encoded tiles::

    offset 0   magic      4 bytes, "META" (or "METZ": every tile gzip-compressed)
    offset 4   count      int32, tiles in the file (64 = 8 x 8 for mod_tile)
    offset 8   x, y, z    int32 each; x, y of the metatile's first tile
    offset 20  index      count (offset, size) int32 pairs, offsets from the
                          start of the file
    then       tile data

Integers are in the byte order of the machine that wrote the file (little
endian everywhere mod_tile runs; big-endian files are recognised too). The
index is x-major: the tile at ``x, y`` is entry ``(x & (n-1)) * n + (y & (n-1))``
with ``n * n == count``. mod_tile always writes 64 entries, also at zooms
0-2 where fewer tiles exist: entries outside the grid have size 0.

mod_tile's directory layout (with its default ``DIRECTORY_HASH``) is
``DIR/STYLE/Z/H4/H3/H2/H1/H0.meta``: the masked x and y are cut into five
4-bit pieces each and every ``Hi`` is ``(x_i << 4) | y_i``, lowest pieces in
the file name, so 16 x 16 tiles share a directory. Without the hash the
layout is ``DIR/STYLE/Z/X/Y.meta``. A parameterised style (``options``)
adds ``.OPTIONS`` before ``.meta``.

Every malformed file raises ``MetaFileError`` naming the file, never a
bare ``struct.error`` or ``IndexError``.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import RenderdError
from ..tilemath import MAX_ZOOM, Tile

MAGIC = b"META"
MAGIC_COMPRESSED = b"METZ"
METATILE = 8
HEAD_SIZE = 20  # magic + count + x + y + z
ENTRY_SIZE = 8
#: A .meta file this large is not a metatile of tiles (mod_tile's own
#: limit is 1 MiB per tile).
MAX_FILE_SIZE = 256 << 20
MAX_SIDE = 64


class MetaFileError(RenderdError, ValueError):
    """A ``.meta`` file is unreadable, truncated or corrupt."""

    def __init__(self, name: str, message: str):
        self.name = name
        self.reason = message
        super().__init__(f"{name}: {message}")


class TruncatedMetaFile(MetaFileError):
    """The file ends before its header or one of its tiles does."""


@dataclass(frozen=True)
class MetaFile:
    """One decoded ``.meta`` file.

    ``tiles`` has ``n * n`` entries in x-major order, ``None`` for a missing
    tile; ``x``, ``y`` are the first tile's column and row.
    """

    z: int
    x: int
    y: int
    n: int
    tiles: tuple[bytes | None, ...]
    compressed: bool = False

    @classmethod
    def build(cls, z: int, x: int, y: int, tiles: Mapping[tuple[int, int], bytes],
              n: int = METATILE) -> "MetaFile":
        """A metafile from ``{(x, y): bytes}``; ``x, y`` may be any tile inside it."""
        mask = n - 1
        x0, y0 = x & ~mask, y & ~mask
        out: list[bytes | None] = [None] * (n * n)
        for (tx, ty), data in tiles.items():
            if not (x0 <= tx < x0 + n and y0 <= ty < y0 + n):
                raise ValueError(f"tile {z}/{tx}/{ty} is not in the metatile at {z}/{x0}/{y0}")
            out[offset(tx, ty, n)] = data
        return cls(z, x0, y0, n, tuple(out))

    def tile(self, x: int, y: int) -> bytes | None:
        if not (self.x <= x < self.x + self.n and self.y <= y < self.y + self.n):
            return None
        return self.tiles[offset(x, y, self.n)]

    @property
    def grid_side(self) -> int:
        """Tiles along a side that lie inside the grid (fewer at zooms 0-2)."""
        return max(0, min(self.n, (1 << self.z) - self.x, (1 << self.z) - self.y))

    def grid_tiles(self) -> Iterator[tuple[Tile, bytes | None]]:
        """The tiles inside the grid, x-major, with ``None`` for missing ones."""
        side_x = max(0, min(self.n, (1 << self.z) - self.x))
        side_y = max(0, min(self.n, (1 << self.z) - self.y))
        for dx in range(side_x):
            for dy in range(side_y):
                yield Tile(self.z, self.x + dx, self.y + dy), self.tiles[dx * self.n + dy]

    @property
    def outside(self) -> int:
        """Tiles with data that lie outside the grid (skipped on import)."""
        limit = 1 << self.z
        count = 0
        for i, data in enumerate(self.tiles):
            if data and (self.x + i // self.n >= limit or self.y + i % self.n >= limit):
                count += 1
        return count


def offset(x: int, y: int, n: int = METATILE) -> int:
    """Position of tile ``x, y`` in its metatile's index (mod_tile's order)."""
    mask = n - 1
    return (x & mask) * n + (y & mask)


# --- decoding ------------------------------------------------------------

def _side(count: int) -> int | None:
    if not 1 <= count <= MAX_SIDE * MAX_SIDE:
        return None
    n = int(round(count ** 0.5))
    if n * n != count or n & (n - 1):
        return None
    return n


def decode(data: bytes, name: str = "<bytes>") -> MetaFile:
    """Decode the bytes of a ``.meta`` file; ``name`` is used in errors."""
    size = len(data)
    if size < HEAD_SIZE:
        raise TruncatedMetaFile(name, f"truncated: {size} bytes, shorter than the {HEAD_SIZE}-byte header")
    magic = bytes(data[:4])
    if magic not in (MAGIC, MAGIC_COMPRESSED):
        raise MetaFileError(name, f"not a mod_tile metatile (magic {magic!r}, expected b'META' or b'METZ')")
    order = "<"
    count, x, y, z = struct.unpack_from("<4i", data, 4)
    if _side(count) is None:
        big = struct.unpack_from(">4i", data, 4)
        if _side(big[0]) is not None:
            order = ">"
            count, x, y, z = big
    n = _side(count)
    if n is None:
        raise MetaFileError(name, f"corrupt header: tile count {count} is not a square of a power of two")
    if not 0 <= z <= MAX_ZOOM:
        raise MetaFileError(name, f"corrupt header: zoom {z} outside 0-{MAX_ZOOM}")
    limit = 1 << z
    if not (0 <= x < limit and 0 <= y < limit):
        raise MetaFileError(name, f"corrupt header: tile {z}/{x}/{y} outside the grid 0..{limit - 1}")
    if x % n or y % n:
        raise MetaFileError(name, f"corrupt header: {z}/{x}/{y} is not the first tile of a {n}x{n} metatile")
    head_len = HEAD_SIZE + count * ENTRY_SIZE
    if size < head_len:
        raise TruncatedMetaFile(name, f"truncated: {size} bytes, the header of {count} entries needs {head_len}")
    entries = struct.unpack_from(f"{order}{2 * count}i", data, HEAD_SIZE)
    compressed = magic == MAGIC_COMPRESSED
    tiles: list[bytes | None] = []
    for i in range(count):
        off, length = entries[2 * i], entries[2 * i + 1]
        if length == 0:
            tiles.append(None)
            continue
        where = f"tile {z}/{x + i // n}/{y + i % n} (entry {i})"
        if length < 0 or off < head_len:
            raise MetaFileError(name, f"corrupt index: {where} has offset {off}, size {length}")
        if off + length > size:
            raise TruncatedMetaFile(name, f"truncated: {where} needs bytes up to {off + length}, "
                                          f"the file has {size}")
        blob = bytes(data[off:off + length])
        if compressed:
            try:
                blob = zlib.decompress(blob, 47)  # gzip or zlib header
            except zlib.error as e:
                raise MetaFileError(name, f"corrupt compressed data in {where}: {e}") from None
        tiles.append(blob)
    return MetaFile(z, x, y, n, tuple(tiles), compressed)


def read(path: str | os.PathLike[str]) -> MetaFile:
    """Read and decode one ``.meta`` file."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_SIZE:
                raise MetaFileError(name, f"{size} bytes is too large for a metatile")
            data = f.read()
    except MetaFileError:
        raise
    except OSError as e:
        raise MetaFileError(name, f"cannot read: {e.strerror or e}") from None
    return decode(data, name)


# --- encoding ------------------------------------------------------------

def encode(meta: MetaFile, compress: bool | None = None) -> bytes:
    """The bytes of ``meta`` as mod_tile writes them (little endian)."""
    compress = meta.compressed if compress is None else compress
    count = meta.n * meta.n
    if len(meta.tiles) != count:
        raise ValueError(f"a {meta.n}x{meta.n} metatile needs {count} tiles, not {len(meta.tiles)}")
    pos = HEAD_SIZE + count * ENTRY_SIZE
    index: list[int] = []
    body: list[bytes] = []
    for data in meta.tiles:
        if data and compress:
            data = _gzip(data)
        length = len(data) if data else 0
        index += [pos, length]
        if length:
            body.append(data)  # type: ignore[arg-type]
        pos += length
    head = struct.pack("<4s4i", MAGIC_COMPRESSED if compress else MAGIC, count, meta.x, meta.y, meta.z)
    return head + struct.pack(f"<{2 * count}i", *index) + b"".join(body)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def write(path: str | os.PathLike[str], meta: MetaFile, compress: bool | None = None,
          mtime: float | None = None) -> Path:
    """Write ``meta`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(meta, compress))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# --- mod_tile's directory layout -------------------------------------------

def hash_parts(x: int, y: int, n: int = METATILE) -> tuple[int, int, int, int, int]:
    """mod_tile's directory hash of the metatile holding ``x, y``: (h4 .. h0)."""
    mask = n - 1
    x &= ~mask
    y &= ~mask
    parts = []
    for _ in range(5):
        parts.append(((x & 0x0F) << 4) | (y & 0x0F))
        x >>= 4
        y >>= 4
    return tuple(reversed(parts))  # type: ignore[return-value]


def meta_relpath(z: int, x: int, y: int, n: int = METATILE, options: str = "",
                 hashed: bool = True) -> str:
    """Path of the metatile holding tile ``z/x/y`` below a style directory."""
    suffix = f".{options}.meta" if options else ".meta"
    if hashed:
        h4, h3, h2, h1, h0 = hash_parts(x, y, n)
        return f"{z}/{h4}/{h3}/{h2}/{h1}/{h0}{suffix}"
    mask = n - 1
    return f"{z}/{x & ~mask}/{y & ~mask}{suffix}"


def meta_path(root: str | os.PathLike[str], z: int, x: int, y: int, style: str | None = None,
              n: int = METATILE, options: str = "", hashed: bool = True) -> Path:
    """``root/[style/]z/h4/h3/h2/h1/h0.meta`` for tile ``z/x/y``."""
    base = Path(root) / style if style else Path(root)
    return base / meta_relpath(z, x, y, n, options, hashed)


def path_matches(path: str | os.PathLike[str], z: int, x: int, y: int, n: int = METATILE) -> bool:
    """Whether ``path`` ends where mod_tile keeps metatile ``z/x/y``.

    Accepts the hashed and the plain layout; the zoom directory is checked
    when it is part of ``path``.
    """
    parts = Path(path).parts
    name = parts[-1] if parts else ""
    if not name.endswith(".meta"):
        return False
    stem = name[:-len(".meta")].split(".", 1)[0]
    for rel in (meta_relpath(z, x, y, n), meta_relpath(z, x, y, n, hashed=False)):
        want = rel[:-len(".meta")].split("/")
        have = list(parts[-len(want) + 1:-1]) + [stem]
        if have == want[1:]:
            before = parts[-len(want)] if len(parts) >= len(want) else None
            if before is None or not before.isdigit() or int(before) == z:
                return True
    return False


def encode_tiles(z: int, tiles: Mapping[tuple[int, int], bytes], n: int = METATILE) -> dict[tuple[int, int], MetaFile]:
    """Group ``{(x, y): bytes}`` at zoom ``z`` into metafiles keyed by first tile."""
    groups: dict[tuple[int, int], dict[tuple[int, int], bytes]] = {}
    mask = n - 1
    for (x, y), data in tiles.items():
        groups.setdefault((x & ~mask, y & ~mask), {})[(x, y)] = data
    return {k: MetaFile.build(z, k[0], k[1], v, n) for k, v in groups.items()}

