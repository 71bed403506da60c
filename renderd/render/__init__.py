"""Renderers: ``open_renderer(layer)`` gives the one for the layer's kind.

A renderer is a context manager; entering it loads the style or datasets
(do that after fork, never at import time). Its ``render(meta)`` returns a
``MetatileResult``: the content hash of every tile (x-major) and the bytes
of each distinct one.
"""

from __future__ import annotations

from typing import Any, Callable

from ..config import LayerConfig
from ..errors import CatalogMissing, RenderdError, StyleError
from ..tilemath import check_tile, metatile_of, tile_index
from .tiles import MEMO, EncodeMemo, MetatileResult, encode_metatile


def open_renderer(layer: LayerConfig, catalog_url: str | None = None,
                  find: Callable[..., Any] | None = None) -> Any:
    """A renderer for ``layer`` (not yet entered: use ``with``).

    A raster layer finds its datasets with ``find(bbox_wgs84, keys)``, by
    default the catalog at ``catalog_url`` (``catalog_finder``).
    """
    if layer.kind == "mapnik":
        from .mapnik_renderer import MapnikRenderer
        return MapnikRenderer(layer)
    if layer.kind == "raster":
        from .raster_renderer import RasterRenderer
        if find is None:
            if catalog_url is None:
                raise StyleError(f"layer {layer.name}: a raster layer needs a catalog ([catalog] url)")
            find = catalog_finder(catalog_url, layer)
        return RasterRenderer(layer, find=find)
    raise StyleError(f"layer {layer.name}: unknown renderer kind {layer.kind!r}")


class CatalogFind:
    """``find(bbox_wgs84, keys)`` over the catalog at ``url`` for one raster layer.

    The catalog is opened on ``open()`` (the renderer calls it on enter,
    after fork) or on the first call; the layer's ``where`` and the URL's
    key values select among the collection's datasets.
    """

    def __init__(self, url: str, layer: LayerConfig,
                 opener: Callable[[str], Any] | None = None):
        self.url = url
        self.layer = layer
        self._opener = opener
        self._catalog: Any = None

    def open(self) -> None:
        if self._catalog is not None:
            return
        try:
            if self._opener is not None:
                self._catalog = self._opener(self.url)
                return
            try:
                from ..catalog import open_catalog  # type: ignore[attr-defined]
            except ImportError:
                raise StyleError(f"layer {self.layer.name}: the catalog is not available in this "
                                 f"installation") from None
            self._catalog = open_catalog(self.url, create=False)   # a reader makes no tables
        except CatalogMissing:
            # nothing ingested yet: no datasets, and asked again at the next metatile
            self._catalog = None
        except StyleError:
            raise
        except RenderdError as e:
            raise StyleError(f"layer {self.layer.name}: catalog {self.url}: {e}") from None

    def __call__(self, bbox_wgs84: tuple[float, float, float, float],
                 keys: dict[str, str] | None) -> list[Any]:
        self.open()
        if self._catalog is None:
            return []
        where = {**self.layer.where, **(keys or {})}
        return self._catalog.find(self.layer.collection, where, bbox_wgs84)

    def close(self) -> None:
        closer = getattr(self._catalog, "close", None)
        if closer is not None:
            closer()
        self._catalog = None


def catalog_finder(url: str, layer: LayerConfig) -> CatalogFind:
    """The ``find`` a raster layer's renderer gets: the one place that binds the catalog."""
    return CatalogFind(url, layer)


def render_tile_png(layer: LayerConfig, z: int, x: int, y: int, *, catalog_url: str | None = None,
                    keys: dict[str, str] | None = None) -> bytes:
    """Render the metatile holding ``z/x/y`` in-process and return that tile's bytes.

    The bytes are in the layer's format (PNG, JPEG or WebP). ``catalog_url``
    and ``keys`` are for raster layers. Raises ``TileError`` for a tile
    outside the grid or the layer's zooms.
    """
    check_tile(z, x, y, layer.minzoom, layer.maxzoom)
    meta = metatile_of(z, x, y, layer.metatile)
    with open_renderer(layer, catalog_url) as renderer:
        result = renderer.render(meta, keys) if layer.kind == "raster" else renderer.render(meta)
    return result.tile(tile_index(meta, x, y))


__all__ = ["MEMO", "CatalogFind", "EncodeMemo", "MetatileResult", "catalog_finder",
           "encode_metatile", "open_renderer", "render_tile_png"]
