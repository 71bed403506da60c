"""The Mapnik renderer: a context manager that loads its style after fork.

``__enter__`` reads the layer's XML style, fills its ``${name}`` placeholders
from the layer's ``params`` (``string.Template``; ``$$`` is a literal
``$``), and loads it with the style's directory as base path so relative
shapefile paths work. One built-in parameter is always defined:
``${font_dir}``, the layer's ``font_dir`` or else the directory of the
fonts that the Mapnik wheel ships, for a style's ``font-directory``.

Values are XML-escaped before they are substituted, so a password may hold
``&`` or ``<``.

Margin. Every image Mapnik draws is clipped at its own border by AGG
(``agg_renderer::start_map_processing`` sets the rasterizer's clip box to
the image), and the clipped edges are rounded to 1/256 px there; text
glyphs that straddle the top or left border are shifted by 1/64 px or
dropped. So the tiles along a metatile's border would carry those
artifacts where the neighbouring metatile has none. The metatile is
therefore drawn ``MARGIN`` pixels larger on every side (same scale, the
bounds grown accordingly, ``buffer_size`` unchanged on top of that) and the
margin is cut off: a tile is then the same whichever metatile it is drawn
in, and equal to the tile drawn alone with the same margin
(``render_tile_alone``). See docs in tests/test_render.py for measurements.
"""

from __future__ import annotations

import os
import string
import time
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from ..config import LayerConfig
from ..errors import RenderError, StyleError
from ..tilemath import Meta, Tile, merc_bounds, meta_merc_bounds
if TYPE_CHECKING:
    import numpy as np

from .tiles import MEMO, EncodeMemo, MetatileResult, encode_metatile, pixels_of


#: Pixels drawn around a metatile (and cut off) so AGG's clipping at the
#: image border never touches a tile. 32 px costs about 6% more pixels.
MARGIN = 32


def wheel_font_dir() -> str:
    """The directory of the DejaVu fonts shipped inside the Mapnik package."""
    from mapnik.paths import fontscollectionpath
    return fontscollectionpath


def style_params(layer: LayerConfig) -> dict[str, str]:
    """The values a style's placeholders are filled from (built-ins, then ``params``)."""
    values = {"font_dir": layer.font_dir or wheel_font_dir()}
    values.update(layer.params)
    return values


def expand_style(text: str, params: dict[str, str], name: str = "style") -> str:
    """Substitute ``${name}`` placeholders; ``StyleError`` names a missing one."""
    quoted = {k: escape(v, {'"': "&quot;", "'": "&apos;"}) for k, v in params.items()}
    try:
        return string.Template(text).substitute(quoted)
    except KeyError as e:
        raise StyleError(f"{name}: placeholder ${{{e.args[0]}}} has no value "
                         f"(set it in the layer's params)") from None
    except ValueError as e:
        raise StyleError(f"{name}: {e} (write $$ for a literal $)") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 400 else text[:397] + "..."


class MapnikRenderer:
    """Renders metatiles of one ``kind = "mapnik"`` layer.

    Use as a context manager in the process that renders (after fork)::

        with MapnikRenderer(layer) as r:
            result = r.render(meta)
    """

    kind = "mapnik"

    def __init__(self, layer: LayerConfig, memo: EncodeMemo | None = MEMO, margin: int = MARGIN):
        if not layer.style:
            raise StyleError(f"layer {layer.name}: no style file")
        self.layer = layer
        self.memo = memo
        self.margin = margin
        self._map: Any = None

    # --- life cycle --------------------------------------------------------
    def __enter__(self) -> "MapnikRenderer":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Load the style (idempotent). Raises ``StyleError`` with the file's name."""
        if self._map is not None:
            return
        import mapnik

        path = os.path.abspath(self.layer.style)  # type: ignore[arg-type]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise StyleError(f"cannot read style {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise StyleError(f"style {path} is not UTF-8 text") from None
        xml = expand_style(text, style_params(self.layer), path)
        if self.layer.font_dir:
            if not os.path.isdir(self.layer.font_dir):
                raise StyleError(f"font directory {self.layer.font_dir} of layer "
                                 f"{self.layer.name} does not exist")
            mapnik.register_fonts(self.layer.font_dir)
        side = self.layer.metatile * self.layer.tile_size
        m = mapnik.Map(side, side)
        try:
            mapnik.load_map_from_string(m, xml, True, os.path.dirname(path) + os.sep)
        except Exception as e:  # Mapnik raises RuntimeError, ValueError, its own types
            raise StyleError(f"cannot load style {path}: {_one_line(e)}") from None
        if "3857" not in m.srs and "merc" not in m.srs:
            raise StyleError(f"style {path}: the map's srs must be EPSG:3857, not {m.srs!r}")
        m.buffer_size = self.layer.buffer
        self._map = m

    def close(self) -> None:
        self._map = None

    # --- rendering -----------------------------------------------------------
    def render_image(self, bounds: tuple[float, float, float, float], width: int, height: int,
                     margin: int = 0) -> Any:
        """Render the Web Mercator ``bounds`` into a new ``mapnik.Image``.

        The image is ``width`` x ``height`` plus ``margin`` pixels on every
        side, with the bounds grown to match at the same scale.
        """
        import mapnik

        if self._map is None:
            self.open()
        m = self._map
        if margin:
            minx, miny, maxx, maxy = bounds
            gx, gy = (maxx - minx) / width * margin, (maxy - miny) / height * margin
            bounds = (minx - gx, miny - gy, maxx + gx, maxy + gy)
            width, height = width + 2 * margin, height + 2 * margin
        if m.width != width or m.height != height:
            m.resize(width, height)
        m.zoom_to_box(mapnik.Box2d(*bounds))
        image = mapnik.Image(width, height)
        try:
            mapnik.render(m, image, self.layer.scale)
        except Exception as e:
            raise RenderError(f"layer {self.layer.name}: rendering failed: {_one_line(e)}") from None
        return image

    def render(self, meta: Meta) -> MetatileResult:
        """Draw the metatile, then split, hash, deduplicate and encode its tiles."""
        side = meta.n * self.layer.tile_size
        t0 = time.perf_counter()
        image = self.render_image(meta_merc_bounds(meta), side, side, self.margin)
        draw = time.perf_counter() - t0
        return encode_metatile(image, meta, self.layer.format, self.layer.tile_size,
                               margin=self.margin, draw_seconds=draw, memo=self.memo)

    def render_tile_alone(self, tile: Tile, margin: int | None = None) -> "np.ndarray":
        """RGBA pixels (h, w, 4) of one tile drawn on its own, with this renderer's margin unless given.

        With ``margin=0`` this is a plain ``tile_size`` square map zoomed to
        the tile, as a single-tile renderer would draw it.
        """
        margin = self.margin if margin is None else margin
        ts = self.layer.tile_size
        image = self.render_image(merc_bounds(tile.z, tile.x, tile.y), ts, ts, margin)
        return pixels_of(image)[margin:margin + ts, margin:margin + ts].copy()
