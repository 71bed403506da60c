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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

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

    def with_stale(self, stale: bool = True) -> "MetaIndex":
        return replace(self, stale=stale)

    def encode(self) -> bytes:
        m = self.meta
        head = "RPYI1 %d %02d %07d %07d %02d %010d %010d %-4s" % (
            1 if self.stale else 0, m.z, m.x0, m.y0, m.n,
            int(self.rendered), int(self.data), self.ext[:4])
        head = head.ljust(HEADER_SIZE - 1) + "\n"
        body = "".join(h + "\n" for h in self.hashes)
        return (head + body).encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> "MetaIndex":
        if len(raw) < HEADER_SIZE or not raw.startswith(MAGIC):
            raise StoreError("not a metatile index")
        try:
            head = raw[:HEADER_SIZE].decode("ascii")
            stale = head[6] == "1"
            z, x0, y0, n = int(head[8:10]), int(head[11:18]), int(head[19:26]), int(head[27:29])
            rendered, data = int(head[30:40]), int(head[41:51])
            ext = head[52:56].strip()
        except (ValueError, UnicodeDecodeError):
            raise StoreError("corrupt metatile index header") from None
        count = n * n
        if len(raw) != HEADER_SIZE + count * ENTRY_SIZE:
            raise StoreError(f"metatile index {z}/{x0}/{y0} is truncated")
        body = raw[HEADER_SIZE:]
        hashes = tuple(body[i * ENTRY_SIZE:i * ENTRY_SIZE + HASH_HEX].decode("ascii") for i in range(count))
        return cls(Meta(z, x0, y0, n), hashes, rendered, data, ext, stale)
