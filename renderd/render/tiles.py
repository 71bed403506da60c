"""Split a rendered metatile into tiles, deduplicate and encode them.

Renderer-independent: the input is a metatile's straight-alpha RGBA pixels,
either a ``mapnik.Image`` or a numpy array of shape ``(h, w, 4)`` and dtype
uint8. Each tile's raw pixels are hashed with xxh3-128 before anything is
encoded; each distinct pixel content is encoded once per metatile, and a
per-process LRU memo (pixel hash -> content hash and bytes) lets the next
metatiles reuse the encodes of repeated tiles (sea, empty land), so the
ocean tile is encoded once per worker, not once per metatile.

Encoding goes through Mapnik's encoders with the layer's format string
(``png``, ``png256``, ``png8:z=1``, ``jpeg80`` ...), so a tile's bytes are
exactly what ``image.view(x, y, w, h).to_string(fmt)`` gives.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import xxhash

from ..errors import RenderError
from ..store.index import content_hash
from ..tilemath import Meta


@dataclass
class MetatileResult:
    """The tiles of one rendered metatile.

    ``hashes`` holds the content hash (blake2b-128 of the encoded bytes) of
    every tile in x-major order; ``blobs`` maps each distinct hash to its
    bytes. ``encoded`` counts the encodes done for this metatile, ``reused``
    the tiles that needed none (a duplicate in the metatile or a memo hit).
    """

    meta: Meta
    hashes: tuple[str, ...]
    blobs: dict[str, bytes]
    encoded: int
    reused: int
    draw_seconds: float
    encode_seconds: float
    memo_hits: int = 0
    #: seconds per phase where a renderer measures them (raster: read, warp,
    #: mosaic, hash, style, encode); draw and encode seconds are their sums
    phases: dict[str, float] = field(default_factory=dict)
    #: unix seconds of the data it shows, where the result knows it (built
    #: from stored tiles: theirs)
    data_time: float | None = None

    @property
    def unique(self) -> int:
        """Distinct tiles in this metatile."""
        return len(self.blobs)

    def tile(self, i: int) -> bytes:
        """Encoded bytes of the tile at x-major index ``i``."""
        return self.blobs[self.hashes[i]]


@dataclass
class EncodeMemo:
    """Per-process LRU of encodes: (format, tile size, pixel hash) -> (hash, bytes).

    Only small encodes are admitted (``max_item`` bytes): tiles that repeat
    across metatiles (uniform sea, empty land, a plain fill pattern) encode
    small, while detailed tiles almost never repeat and would only push the
    useful entries out.
    """

    max_entries: int = 4096
    max_bytes: int = 32 << 20
    max_item: int = 16 << 10
    hits: int = 0
    misses: int = 0
    _items: "OrderedDict[tuple[str, int, bytes], tuple[str, bytes]]" = field(
        default_factory=OrderedDict, repr=False)
    _bytes: int = 0

    def get(self, key: tuple[str, int, bytes]) -> tuple[str, bytes] | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: tuple[str, int, bytes], digest: str, data: bytes) -> None:
        if len(data) > self.max_item or key in self._items:
            return
        self._items[key] = (digest, data)
        self._bytes += len(data)
        while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= len(old)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


#: The memo shared by every metatile encoded in this process.
MEMO = EncodeMemo()


def pixels_of(image: Any) -> np.ndarray:
    """The RGBA pixels of a ``mapnik.Image`` (one copy) or a numpy array, as (h, w, 4)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 4:
            raise RenderError(f"metatile pixels must be (h, w, 4) uint8, not {image.shape} {image.dtype}")
        return image
    w, h = image.width(), image.height()
    raw = image.to_string()
    if len(raw) != w * h * 4:
        raise RenderError(f"metatile image is not 8-bit RGBA ({len(raw)} bytes for {w}x{h})")
    return np.frombuffer(raw, np.uint8).reshape(h, w, 4)


def tile_pixel_hashes(pixels: np.ndarray, meta: Meta, tile_size: int) -> list[bytes]:
    """xxh3-128 digest of each tile's raw pixels, x-major."""
    out = []
    for dx in range(meta.n):
        cols = pixels[:, dx * tile_size:(dx + 1) * tile_size]
        for dy in range(meta.n):
            tile = np.ascontiguousarray(cols[dy * tile_size:(dy + 1) * tile_size])
            out.append(xxhash.xxh3_128_digest(tile))
    return out


def view_pixel_hashes(image: Any, meta: Meta, tile_size: int, margin: int = 0) -> list[bytes]:
    """The digests of ``tile_pixel_hashes`` for a ``mapnik.Image``, read tile
    by tile through views (no copy of the whole image: a third of the time).
    A solid image (an empty metatile: common where data is sparse) is hashed
    once; ``is_solid`` stops at the first pixel that differs."""
    n = meta.n
    if image.is_solid():
        return [xxhash.xxh3_128_digest(image.view(margin, margin, tile_size, tile_size).to_string())] * (n * n)
    return [xxhash.xxh3_128_digest(image.view(margin + dx * tile_size, margin + dy * tile_size,
                                              tile_size, tile_size).to_string())
            for dx in range(n) for dy in range(n)]


def encode_metatile(image: Any, meta: Meta, fmt: str, tile_size: int = 256, *, margin: int = 0,
                    draw_seconds: float = 0.0, memo: EncodeMemo | None = MEMO) -> MetatileResult:
    """Split ``image`` (a metatile of ``meta.n`` x ``meta.n`` tiles) and encode its tiles.

    ``margin`` pixels around the tiles are part of the image but of no tile
    (a renderer may draw a little more than the metatile, see
    ``mapnik_renderer``). ``memo`` defaults to the process-wide memo; pass
    ``None`` to encode every distinct tile of this metatile afresh.
    """
    t0 = time.perf_counter()
    side = meta.n * tile_size
    full = side + 2 * margin
    numpy_input = isinstance(image, np.ndarray)
    width, height = (image.shape[1], image.shape[0]) if numpy_input else (image.width(), image.height())
    if width != full or height != full:
        raise RenderError(f"metatile {meta} image is {width}x{height}, expected {full}x{full}")
    if numpy_input:
        pixels = pixels_of(image)[margin:margin + side, margin:margin + side]
        digests = tile_pixel_hashes(pixels, meta, tile_size)
    else:
        digests = view_pixel_hashes(image, meta, tile_size, margin)
    # a numpy input is handed to Mapnik one distinct tile at a time
    mimage = None if numpy_input else image

    def encode_one(i: int) -> bytes:
        x, y = (i // meta.n) * tile_size, (i % meta.n) * tile_size
        if mimage is not None:
            return encode_view(mimage, x + margin, y + margin, tile_size, fmt)
        return encode_array(pixels[y:y + tile_size, x:x + tile_size], fmt)

    return encode_distinct(meta, digests, encode_one, fmt, tile_size, memo=memo,
                           draw_seconds=draw_seconds, started=t0)


def encode_distinct(meta: Meta, digests: list[bytes], encode_one: Callable[[int], bytes],
                    memo_key: str, tile_size: int = 256, *, memo: EncodeMemo | None = MEMO,
                    draw_seconds: float = 0.0, started: float | None = None) -> MetatileResult:
    """Encode each distinct tile of a metatile once, given a digest per tile (x-major).

    ``encode_one(i)`` gives the bytes of tile ``i``; it is called once per
    distinct digest that the memo does not hold. ``memo_key`` names what the
    digests are digests of (a format, or a raster layer's style), so that
    equal digests of different renderings never share an encode.
    ``started`` is when the caller's encode phase began (``perf_counter``).
    """
    t0 = time.perf_counter() if started is None else started
    by_pixels: dict[bytes, str] = {}
    blobs: dict[str, bytes] = {}
    hashes: list[str] = []
    encoded = memo_hits = 0
    for i, pd in enumerate(digests):
        digest = by_pixels.get(pd)
        if digest is None:
            key = (memo_key, tile_size, pd)
            item = memo.get(key) if memo is not None else None
            if item is None:
                data = encode_one(i)
                digest = content_hash(data)
                encoded += 1
                if memo is not None:
                    memo.put(key, digest, data)
            else:
                digest, data = item
                memo_hits += 1
            by_pixels[pd] = digest
            blobs.setdefault(digest, data)
        hashes.append(digest)
    return MetatileResult(meta=meta, hashes=tuple(hashes), blobs=blobs, encoded=encoded,
                          reused=len(hashes) - encoded, draw_seconds=draw_seconds,
                          encode_seconds=time.perf_counter() - t0, memo_hits=memo_hits)


def encode_view(image: Any, x: int, y: int, size: int, fmt: str) -> bytes:
    """Mapnik's encoding of the ``size`` square at ``x, y`` of a ``mapnik.Image``."""
    try:
        return image.view(x, y, size, size).to_string(fmt)
    except (RuntimeError, ValueError) as e:
        raise RenderError(f"cannot encode a tile as {fmt!r}: {e}") from None


def encode_array(pixels: np.ndarray, fmt: str) -> bytes:
    """Mapnik's encoding of straight-alpha RGBA pixels given as a numpy array."""
    import mapnik
    image = mapnik.Image.from_string(_stored_png(np.ascontiguousarray(pixels)))
    try:
        return image.to_string(fmt)
    except (RuntimeError, ValueError) as e:
        raise RenderError(f"cannot encode a tile as {fmt!r}: {e}") from None


def _stored_png(pixels: np.ndarray) -> bytes:
    """An uncompressed (deflate level 0) RGBA PNG: an exact, fast way into Mapnik.

    Mapnik's PNG reader keeps straight alpha as it is (its TIFF reader
    premultiplies, which would change the pixels).
    """
    h, w, _ = pixels.shape
    rows = np.zeros((h, w * 4 + 1), np.uint8)  # filter byte 0 (None) before each row
    rows[:, 1:] = pixels.reshape(h, w * 4)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
            + chunk(b"IEND", b""))
