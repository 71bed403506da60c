"""The pack: one metatile in one file of the disk store, or one or two
strings of the Redis store (docs/storage.md).

The mirror of ``lua/renderd/pack.lua``, which reads it in nginx. A pack of an
``n x n`` metatile with ``D`` distinct tiles is, integers unsigned
little-endian, ``E = 64 + 2 n²``::

    [0, 64)               header: the index header's fields at its offsets
                          (renderd/store/index.py), magic "RPYP2 ", D in 4 digits at 57
    [64, E)               one uint16 per tile, x-major: 0 = no tile, k = record k
    [E, E + 24 D)         record k (from 1): the content hash's 16 bytes, then
                          uint32 offset from the start of the file and uint32
                          length of the tile's bytes; 0 and 0 = in the shared
                          pool (disk {path}/blobs/ab/<hash>, Redis {prefix}:pool:<hash>)
    then                  the bytes of the tiles kept in the pack (each right after
                          a copy of its record in the Redis store's packs)

The header is ``MetaIndex.header(PACK_MAGIC, " %04d" % D)``, so the stale
byte is at offset 6 as in the index. Entry ``i`` is tile
``(x0 + i // n, y0 + i % n)``, at byte ``64 + 2 i``; record ``k`` is at byte
``E + 24 (k - 1)``, and its hash's 32 hex digits are the index entry, the
ETag and the pool file's name::

    encode_pack(index, inline)   # the pack of a MetaIndex, the tiles of
                                 # {hash: bytes} inside, every other in the pool
    head_of(first_64_bytes)      # the head size H = E + 24 D (where the kept
                                 # tiles start), 0 if the header does not give one
    decode_pack(raw, size)       # Pack(index, locations) of a pack file of
                                 # size bytes from its first bytes (at least H);
                                 # StoreError if corrupt
    pack.pooled(), pack.inline() # the hashes left to the pool; {hash: (offset,
                                 # length)} of the tiles kept in the pack

Records are numbered in order of first appearance in the entries (the
index's ``unique()`` order), so the entries name each of 1..D, and record
``k`` first after record ``k - 1``. A pack is corrupt, and readers log it
and treat it as absent, if ``D`` is not 4 digits or exceeds ``n²``, its
head is cut short, an entry breaks that rule, a record has the hash 0 or
the hash of another record, or a location other than 0/0 does not lie in
``[E + 24 D, size)``. Another magic is not a pack (``RPYI1 `` is the ASCII
format of earlier versions: nothing converts it, the metatile is rendered
again). Which tiles a writer keeps in the pack is its choice, not part of
the format (renderd/store/disk.py, renderd/store/redis.py: the same policy).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import StoreError
from .index import EMPTY, HEADER_SIZE, MAGIC, MetaIndex, content_hash, decode_header

#: A pack's magic and format version; ``MAGIC`` (the ASCII index) is the previous format.
PACK_MAGIC = b"RPYP2 "
#: Where the header holds D, the number of distinct tiles, in 4 digits.
COUNT_OFFSET, COUNT_DIGITS = 57, 4
#: An entry: 0 (no tile) or the number of a distinct tile's record, from 1.
ENTRY = struct.Struct("<H")
#: A distinct tile: its hash's 16 bytes, offset and length (0, 0: in the pool).
RECORD = struct.Struct("<16sII")
#: The location of an empty entry or of a tile in the pool.
POOL = (0, 0)
#: Offsets and lengths are 4 bytes: a pack may not reach 4 GiB.
MAX_PACK = 2 ** 32 - 1
NO_HASH = bytes(16)


def head_size(n: int, count: int) -> int:
    """Bytes of the head (header, entries, records), where the inline tiles start."""
    return HEADER_SIZE + ENTRY.size * n * n + RECORD.size * count


def encode_pack(index: MetaIndex, inline: dict[str, bytes], marked: bool = False) -> bytes:
    """The pack of ``index`` with the tiles of ``inline`` inside; every other
    non-empty hash of the index is in the pool. ``marked``: each tile's
    bytes come right after a copy of its record (the Redis store's packs:
    a reader of one range checks it there)."""
    unique = index.unique()
    number = {h: k for k, h in enumerate(unique, 1)}
    offset = head_size(index.meta.n, len(unique))
    records, body = [], []
    for h in unique:
        data = inline.get(h)
        if data is None:
            records.append(RECORD.pack(bytes.fromhex(h), *POOL))
            continue
        offset += RECORD.size if marked else 0
        records.append(RECORD.pack(bytes.fromhex(h), offset, len(data)))
        body += [records[-1], data] if marked else [data]
        offset += len(data)
    if offset > MAX_PACK:
        raise StoreError(f"the pack of {index.meta} would have {offset} bytes, more than a pack can hold")
    entries = struct.pack(f"<{len(index.hashes)}H", *(number.get(h, 0) for h in index.hashes))
    head = index.header(PACK_MAGIC, " %0*d" % (COUNT_DIGITS, len(unique)))
    return b"".join([head, entries, *records, *body])


@dataclass(frozen=True)
class Pack:
    """A decoded pack head: the index and each entry's (offset, length)."""

    index: MetaIndex
    locations: tuple[tuple[int, int], ...]

    def pooled(self) -> list[str]:
        """Distinct non-empty hashes the pack leaves to the pool, in index order."""
        return list(dict.fromkeys(h for h, loc in zip(self.index.hashes, self.locations)
                                  if loc == POOL and h != EMPTY))

    def tiles_from(self, raw: bytes, wanted) -> dict[str, bytes]:
        """The bytes of the ``wanted`` tiles that this pack, whose bytes are
        ``raw``, keeps inside (those that hash to their entry)."""
        out = {}
        for h, (off, size) in self.inline().items():
            if h in wanted and content_hash(raw[off:off + size]) == h:
                out[h] = raw[off:off + size]
        return out

    def inline(self) -> dict[str, tuple[int, int]]:
        """Where each distinct tile kept in the pack is: hash -> (offset, length)."""
        out: dict[str, tuple[int, int]] = {}
        for h, loc in zip(self.index.hashes, self.locations):
            if loc != POOL:
                out.setdefault(h, loc)
        return out


def head_of(header: bytes) -> int:
    """The head size that the first 64 bytes of a pack give; 0 if they do not."""
    digits = header[COUNT_OFFSET:COUNT_OFFSET + COUNT_DIGITS]
    try:
        n = int(header[27:29])
    except ValueError:
        return 0
    if n < 1 or not (len(digits) == COUNT_DIGITS and digits.isdigit() and int(digits) <= n * n):
        return 0
    return head_size(n, int(digits))


def decode_pack(raw: bytes, size: int) -> Pack:
    """Decode the head of a pack file of ``size`` bytes whose first bytes are
    ``raw`` (at least the head; more is ignored). ``StoreError`` if corrupt."""
    if raw.startswith(MAGIC):
        raise StoreError(f"a pack of an earlier format ({MAGIC.decode().strip()})")
    meta, stale, rendered, data, ext = decode_header(raw, PACK_MAGIC, "metatile pack")
    end = head_of(raw)
    if end == 0:
        raise StoreError("corrupt count of distinct tiles")
    if len(raw) < end or size < end:
        raise StoreError(f"truncated pack ({size} bytes, its head needs {end})")
    count = meta.n * meta.n
    entries = struct.unpack_from(f"<{count}H", raw, HEADER_SIZE)
    records = list(RECORD.iter_unpack(raw[HEADER_SIZE + ENTRY.size * count:end]))
    hexes = []
    for k, (digest, off, length) in enumerate(records, 1):
        if digest == NO_HASH:
            raise StoreError(f"record {k} has no hash")
        if (off, length) != POOL and (off < end or off + length > size):
            raise StoreError(f"location {off}/{length} of record {k} is outside the pack's tiles")
        hexes.append(digest.hex())
    if len(set(hexes)) != len(hexes):
        raise StoreError("two records have one hash")
    hashes, locations, last = [], [], 0
    for i, k in enumerate(entries):
        if k > len(records):
            raise StoreError(f"entry {i} names record {k} of {len(records)}")
        if k > last:  # records are numbered in order of first appearance
            if k != last + 1:
                raise StoreError(f"entry {i} names record {k} before record {last + 1}")
            last = k
        hashes.append(hexes[k - 1] if k else EMPTY)
        locations.append(records[k - 1][1:] if k else POOL)
    if last != len(records):
        raise StoreError("a record is named by no entry")
    index = MetaIndex(meta, tuple(hashes), rendered, data, ext, stale)
    return Pack(index, tuple(locations))
