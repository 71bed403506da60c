"""A metatile from the next zoom's stored tiles (2x2 -> 1), GeoTrellis's
``Pyramid.up``, instead of a read of the sources.

Each tile is made from the four tiles of zoom z+1 it covers (in the
children: the metatiles of zoom z+1 covering the metatile, four at most):
pasted into one image twice its size and halved, each 2x2 block of pixels
averaged with premultiplied alpha (a half-transparent edge does not
darken), by Pillow (``RGBa``, ``reduce``). A tile is known by the content
hashes of its four children, so the tiles made of the same four (sea,
land without data) are made and encoded once, and across metatiles through
the encode memo; each distinct child is decoded once. Tiles are encoded in
the layer's format as the renderer encodes them: an opaque tile without
alpha, a tile without any visible pixel as the renderer's own empty tile
(the same bytes), the rest with alpha.

``docs/pipelines.md`` ("Lower zooms from tiles") says where this is used:
measured against renders from the sources by ``bench/pyramid.py``.
"""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np

from ..config import LayerConfig
from ..errors import RenderError
from ..store.base import Store
from ..store.index import EMPTY
from ..tilemath import Meta, metatile_size
from .raster_encode import TileFormat, empty, encode_image
from .tiles import MEMO, EncodeMemo, MetatileResult, encode_distinct


def children(m: Meta, meta: int = 8) -> list[Meta]:
    """The metatiles of zoom ``m.z + 1`` covering ``m``."""
    z = m.z + 1
    n = metatile_size(z, meta)
    x0, y0, span = 2 * m.x0, 2 * m.y0, 2 * m.n
    return [Meta(z, x, y, n) for x in range(x0, x0 + span, n) for y in range(y0, y0 + span, n)]


def decode(data: bytes) -> np.ndarray:
    """A tile's pixels as (h, w, 4) RGBA."""
    return np.asarray(_image(data).convert("RGBA"))


def _image(data: bytes):
    from PIL import Image
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except (OSError, ValueError) as e:
        raise RenderError(f"cannot decode a stored tile: {e}") from None


def halve(pixels: np.ndarray) -> np.ndarray:
    """Each 2x2 block of RGBA pixels as one, averaged with premultiplied
    alpha (what ``from_children`` does, on an array: for tests)."""
    from PIL import Image
    im = Image.fromarray(np.ascontiguousarray(pixels), "RGBA").convert("RGBa").reduce(2)
    return np.asarray(im.convert("RGBA"))


def from_children(store: Store, tileset: str, m: Meta, layer: LayerConfig,
                  memo: EncodeMemo | None = MEMO) -> MetatileResult | None:
    """``m`` built from its children as stored, or None when one of them is
    not stored (or stale: built from it, ``m`` would be stale too)."""
    from PIL import Image

    t0 = time.perf_counter()
    ts = layer.tile_size
    fmt = TileFormat.parse(layer.format)
    hashes: dict[tuple[int, int], str] = {}     # (x, y) at zoom z+1 -> content hash
    blobs: dict[str, bytes] = {}
    data_time = 0
    for child in children(m, layer.metatile):
        got = store.get_metatile(tileset, child)
        if got is None or got[0].stale:
            return None
        idx, data = got
        data_time = max(data_time, idx.data)
        for i, h in enumerate(idx.hashes):
            if h != EMPTY:
                if h not in data:
                    return None
                hashes[(child.x0 + i // child.n, child.y0 + i % child.n)] = h
                blobs[h] = data[h]
    images: dict[str, object] = {}
    digests: list[bytes] = []
    quads: dict[bytes, tuple[str, ...]] = {}
    for i in range(m.n * m.n):
        x, y = 2 * (m.x0 + i // m.n), 2 * (m.y0 + i % m.n)
        quad = tuple(hashes.get(k, EMPTY) for k in ((x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)))
        d = EMPTY_QUAD if all(h == EMPTY for h in quad) else hashlib.blake2b(
            "".join(quad).encode(), digest_size=16).digest()
        quads[d] = quad
        digests.append(d)
    draw = time.perf_counter() - t0
    empty_tile = empty(ts, fmt)

    def tile_image(h: str):
        im = images.get(h)
        if im is None:
            im = _image(blobs[h])
            if im.mode not in ("RGB", "RGBA"):     # palette and grey tiles
                clear = "transparency" in im.info or im.mode in ("LA", "PA")
                im = im.convert("RGBA" if clear else "RGB")
            images[h] = im
        return im

    def encode_one(i: int) -> bytes:
        quad = quads[digests[i]]
        if digests[i] == EMPTY_QUAD:
            return empty_tile
        parts = [None if h == EMPTY else tile_image(h) for h in quad]
        opaque = all(p is not None and p.mode == "RGB" for p in parts)
        mode = "RGB" if opaque else "RGBa"        # (premultiplied: a clear pixel adds no colour)
        canvas = Image.new(mode, (2 * ts, 2 * ts))
        for (dx, dy), p in zip(((0, 0), (ts, 0), (0, ts), (ts, ts)), parts):
            if p is not None:
                canvas.paste(p if p.mode == mode else p.convert(mode), (dx, dy))
        tile = canvas.reduce(2)
        if not opaque:
            tile = tile.convert("RGBA")
            lo, hi = tile.getchannel("A").getextrema()
            if hi == 0:
                return empty_tile
            if lo == 255:
                tile = tile.convert("RGB")
        return encode_image(tile, fmt)

    result = encode_distinct(m, digests, encode_one, f"down:{layer.format}:{ts}", ts, memo=memo,
                             draw_seconds=draw, started=time.perf_counter())
    result.data_time = data_time or None
    return result


#: resamplings that average source pixels: a zoom built from the next one's
#: tiles shows what a render from the sources shows (measured, bench/pyramid.py)
INTERPOLATING = frozenset({"average", "bilinear", "cubic", "cubic_spline", "lanczos"})
#: zooms built from tiles below a zoom rendered from the sources, at the most:
#: a third shows visible differences (docs/pipelines.md, "Lower zooms from tiles")
AUTO_DEPTH = 2


def from_tiles(layer: LayerConfig, z: int, top: int, mode: str = "auto") -> bool:
    """Whether zoom ``z`` of a pyramid whose highest zoom is ``top`` is built
    from the tiles of zoom ``z + 1`` (``mode``: ``sources``, ``tiles`` or
    ``auto``: for layers whose resampling averages, ``AUTO_DEPTH`` zooms
    below each zoom rendered from the sources)."""
    if z >= top or mode == "sources" or layer.kind != "raster":
        return False
    if mode == "tiles":
        return True
    return layer.resampling in INTERPOLATING and (top - z) % (AUTO_DEPTH + 1) != 0


#: the digest of a tile whose four children are all empty
EMPTY_QUAD = b"\0" * 16

__all__ = ["AUTO_DEPTH", "EMPTY_QUAD", "INTERPOLATING", "children", "decode", "from_children",
           "from_tiles", "halve"]
