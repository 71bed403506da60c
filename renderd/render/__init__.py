"""Renderers: ``open_renderer(layer)`` gives the one for the layer's kind.

A renderer is a context manager; entering it loads the style or datasets
(do that after fork, never at import time). Its ``render(meta)`` returns a
``MetatileResult``: the content hash of every tile (x-major) and the bytes
of each distinct one.
"""

from __future__ import annotations

from typing import Any

from ..config import LayerConfig
from ..errors import StyleError
from ..tilemath import check_tile, metatile_of, tile_index
from .tiles import MEMO, EncodeMemo, MetatileResult, encode_metatile


def open_renderer(layer: LayerConfig) -> Any:
    """A renderer for ``layer`` (not yet entered: use ``with``)."""
    if layer.kind == "mapnik":
        from .mapnik_renderer import MapnikRenderer
        return MapnikRenderer(layer)
    if layer.kind == "raster":
        try:
            from .raster_renderer import RasterRenderer  # type: ignore[import-not-found]
        except ImportError:
            raise StyleError(f"layer {layer.name}: the raster renderer is not available") from None
        return RasterRenderer(layer)
    raise StyleError(f"layer {layer.name}: unknown renderer kind {layer.kind!r}")


def render_tile_png(layer: LayerConfig, z: int, x: int, y: int) -> bytes:
    """Render the metatile holding ``z/x/y`` in-process and return that tile's bytes.

    The bytes are in the layer's format (PNG, or JPEG for a ``jpeg`` layer).
    Raises ``TileError`` for a tile outside the grid or the layer's zooms.
    """
    check_tile(z, x, y, layer.minzoom, layer.maxzoom)
    meta = metatile_of(z, x, y, layer.metatile)
    with open_renderer(layer) as renderer:
        result = renderer.render(meta)
    return result.tile(tile_index(meta, x, y))


__all__ = ["MEMO", "EncodeMemo", "MetatileResult", "encode_metatile", "open_renderer",
           "render_tile_png"]
