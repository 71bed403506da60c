"""The metatile index: which blob each tile of a metatile is, and when.

One format for both stores (a file on disk, a string in Redis) and for the
wire, fixed-width ASCII so that Lua reads it with ``string.sub``:

    offset  0  "RPYI1 "           magic and version
    offset  6  stale flag         "0" or "1" (rewritten in place by expire)
    offset  8  z                  2 digits
    offset 11  x0                 7 digits, the metatile's first tile column
    offset 19  y0                 7 digits
    offset 27  n                  2 digits, tiles along a side
    offset 30  rendered           10 digits, unix seconds
    offset 41  data               10 digits, unix seconds of the source data
    offset 52  ext                4 chars, "png " or "jpg "
    padding with spaces to offset 63, then "\\n"          (HEADER_SIZE = 64)
    then n*n entries of 32 lowercase hex digits + "\\n"   (ENTRY_SIZE = 33)

Entries are x-major: tile (x, y) is entry ``(x - x0) * n + (y - y0)``, at
byte ``64 + 33 * i``. An entry of 32 zeros (``EMPTY``) means no tile.

The disk store's pack files (renderd/store/pack.py) begin with the same
header under another magic (``MetaIndex.header``, ``decode_header``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import StoreError
from ..tilemath import Meta, tile_index

MAGIC = b"RPYI1 "
HEADER_SIZE = 64
ENTRY_SIZE = 33
STALE_OFFSET = 6
HASH_HEX = 32
EMPTY = "0" * HASH_HEX


def content_hash(data: bytes) -> str:
    """The 128-bit content hash of an encoded tile: its blob key and ETag."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class MetaIndex:
    meta: Meta
    hashes: tuple[str, ...]
    rendered: int
    data: int
    ext: str = "png"
    stale: bool = False

    def __post_init__(self) -> None:
        if len(self.hashes) != self.meta.n * self.meta.n:
            raise StoreError(f"index of {self.meta} needs {self.meta.n ** 2} entries, has {len(self.hashes)}")

    def tile_hash(self, x: int, y: int) -> str | None:
        h = self.hashes[tile_index(self.meta, x, y)]
        return None if h == EMPTY else h

    def unique(self) -> list[str]:
        """Distinct non-empty hashes in index order (the wire's blob order)."""
        seen: dict[str, None] = {}
        for h in self.hashes:
            if h != EMPTY:
                seen.setdefault(h, None)
        return list(seen)

    def header(self, magic: bytes = MAGIC, tail: str = "") -> bytes:
        """The 64-byte header; ``magic`` (6 bytes) in front, ``tail`` right
        after the extension, in what is otherwise padding."""
        m = self.meta
        head = "%s%d %02d %07d %07d %02d %010d %010d %-4s%s" % (
            magic.decode("ascii"), 1 if self.stale else 0, m.z, m.x0, m.y0, m.n,
            int(self.rendered), int(self.data), self.ext[:4], tail)
        return (head.ljust(HEADER_SIZE - 1) + "\n").encode("ascii")

    def encode(self) -> bytes:
        return self.header() + "".join(h + "\n" for h in self.hashes).encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> "MetaIndex":
        meta, stale, rendered, data, ext = decode_header(raw)
        count = meta.n * meta.n
        if len(raw) != HEADER_SIZE + count * ENTRY_SIZE:
            raise StoreError(f"metatile index {meta.z}/{meta.x0}/{meta.y0} is truncated")
        body = raw[HEADER_SIZE:]
        hashes = tuple(body[i * ENTRY_SIZE:i * ENTRY_SIZE + HASH_HEX].decode("ascii") for i in range(count))
        return cls(meta, hashes, rendered, data, ext, stale)


def decode_header(raw: bytes, magic: bytes = MAGIC, what: str = "metatile index"
                  ) -> tuple[Meta, bool, int, int, str]:
    """(meta, stale, rendered, data, ext) of a header that starts with
    ``magic``; ``StoreError`` naming ``what`` if it does not, or is corrupt."""
    if len(raw) < HEADER_SIZE or not raw.startswith(magic):
        raise StoreError(f"not a {what}")
    try:
        head = raw[:HEADER_SIZE].decode("ascii")
        stale = head[6] == "1"
        z, x0, y0, n = int(head[8:10]), int(head[11:18]), int(head[19:26]), int(head[27:29])
        rendered, data = int(head[30:40]), int(head[41:51])
        ext = head[52:56].strip()
    except (ValueError, UnicodeDecodeError):
        raise StoreError(f"corrupt {what} header") from None
    return Meta(z, x0, y0, n), stale, rendered, data, ext
