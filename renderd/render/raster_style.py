"""Mosaic of a metatile's pieces, and the styling of one tile's values.

The order of work in the raster renderer: read and mosaic the unstyled
values of the whole metatile (``Mosaic``), hash each tile's values and mask,
then style (``Style.apply``) and encode only the distinct tiles. Styling is
band math (``expression``), ``rescale`` to 0..255 and a ``colormap``;
it works on one tile at a time.

Rescale follows rio-tiler's arithmetic to the bit (clip and scale in
float64, the result stored back in the source's float type, then truncated
to uint8), so that the same numbers give the same pixels as rio-tiler's
``ImageData.rescale``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..catalog.model import Dataset
from ..errors import RenderError
from .expression import Expression
from .raster_read import Grid, Piece

Range = tuple[float, float]


# --- mosaic -------------------------------------------------------------------

class Mosaic:
    """Pieces of several datasets combined into one metatile.

    ``first`` keeps the first valid value of each pixel (datasets in the
    catalog's order; the renderer reverses the order for ``last``);
    ``highest`` and ``lowest`` keep the largest or smallest valid value of
    each band, ``mean`` the mean of the valid values (truncated to the
    dtype, as rio-tiler's mean method does).
    """

    def __init__(self, method: str, grid: Grid, nbands: int, dtype: np.dtype):
        self.method = method
        self.grid = grid
        self.nbands = nbands
        self.dtype = np.dtype(dtype)
        self.values: np.ndarray | None = None
        self.valid: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._count: np.ndarray | None = None

    def _alloc(self) -> None:
        g = self.grid
        self.values = np.zeros((g.height, g.width, self.nbands), dtype=self.dtype)
        self.valid = np.zeros((g.height, g.width), dtype=bool)

    def add(self, p: Piece) -> None:
        g = self.grid
        whole = (p.rows == slice(0, g.height) and p.cols == slice(0, g.width)
                 and p.values.dtype == self.dtype)
        if self.values is None and whole and self.method != "mean":
            self.values, self.valid = p.values, p.valid
            return
        if self.values is None:
            self._alloc()
        assert self.values is not None and self.valid is not None
        v = self.values[p.rows, p.cols]
        m = self.valid[p.rows, p.cols]
        if self.method in ("first", "last"):
            take = p.valid & ~m
            np.copyto(v, p.values, where=take[:, :, None], casting="unsafe")
            m |= take
        elif self.method in ("highest", "lowest"):
            pick = np.maximum if self.method == "highest" else np.minimum
            both = (p.valid & m)[:, :, None]
            new = (p.valid & ~m)[:, :, None]
            np.copyto(v, pick(v, p.values), where=both, casting="unsafe")
            np.copyto(v, p.values, where=new, casting="unsafe")
            m |= p.valid
        else:  # mean
            if self._sum is None:
                self._sum = np.zeros(self.values.shape, dtype=np.float64)
                self._count = np.zeros(self.valid.shape, dtype=np.int32)
            assert self._count is not None
            s = self._sum[p.rows, p.cols]
            s += np.where(p.valid[:, :, None], p.values, 0)
            self._count[p.rows, p.cols] += p.valid
            m |= p.valid

    @property
    def complete(self) -> bool:
        """Every pixel has a value, and more datasets would change none (first, last)."""
        return (self.method in ("first", "last") and self.valid is not None
                and bool(self.valid.all()))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Values (h, w, bands) and validity (h, w) of the whole metatile."""
        if self.values is None:
            self._alloc()
        assert self.values is not None and self.valid is not None
        if self.method == "mean" and self._sum is not None and self._count is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = self._sum / np.maximum(self._count, 1)[:, :, None]
            self.values = mean.astype(self.dtype)
        return self.values, self.valid


# --- rescale ranges -----------------------------------------------------------

PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?)")


def _item(text: str, datasets: Sequence[Dataset], band: int, low: bool) -> float:
    m = PERCENTILE.fullmatch(text)
    if not m:
        return float(text)
    p = float(m.group(1))
    vals = []
    for ds in datasets:
        if band > len(ds.stats):
            raise RenderError(f"rescale {text}: dataset {ds.path} has no statistics for band {band}")
        vals.append(ds.band_stats(band).percentile(p))
    if not vals:
        raise RenderError(f"rescale {text}: no dataset with statistics")
    return min(vals) if low else max(vals)


def band_range(datasets: Sequence[Dataset], band: int, dtype: np.dtype,
               pair: tuple[str, str] | None) -> Range:
    """The rescale range of one input band.

    ``pair`` is the layer's ``MIN,MAX`` (numbers or percentiles ``pN`` of
    the catalog's statistics); None means the catalog's min and max. Over
    several datasets the range spans them all (lowest low, highest high), so
    a mosaic is stretched alike everywhere.
    """
    if pair is None:
        if not datasets or any(band > len(ds.stats) for ds in datasets):
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                return float(info.min), float(info.max)
            raise RenderError(f"band {band} of dtype {dtype} needs a rescale: the catalog "
                              f"has no statistics for it")
        return (min(ds.band_stats(band).min for ds in datasets),
                max(ds.band_stats(band).max for ds in datasets))
    return _item(pair[0], datasets, band, True), _item(pair[1], datasets, band, False)


def expression_range(expr: Expression, inputs: dict[int, Range]) -> Range:
    """Where ``expr`` goes when each band spans its range: its extremes over the corners."""
    bands = list(expr.bands)[:10]
    corners = list(itertools.product(*[inputs[b] for b in bands]))
    arrays = {b: np.array([c[i] for c in corners], dtype=np.float32) for i, b in enumerate(bands)}
    out = expr(arrays)
    out = out[np.isfinite(out)]
    if not out.size or float(out.min()) == float(out.max()):
        return (0.0, 1.0) if not out.size else (float(out.min()) - 0.5, float(out.max()) + 0.5)
    return float(out.min()), float(out.max())


def parse_rescale(text: str) -> list[tuple[str, str]]:
    """``"a,b"`` or ``"a,b;c,d"`` into pairs of items (numbers or ``pN``)."""
    pairs = []
    for part in text.split(";") if text else []:
        lo, hi = part.split(",")
        pairs.append((lo, hi))
    return pairs


# --- the style ----------------------------------------------------------------

@dataclass
class Styled:
    """One styled tile, ready to encode.

    ``mode`` is ``L``, ``RGB`` or ``RGBA`` (``pixels`` of shape (h, w) or
    (h, w, 3|4)), or ``P``: ``pixels`` are indexes into ``lut`` (256 x RGBA).
    ``valid`` says which pixels have data (transparent elsewhere).
    """

    mode: str
    pixels: np.ndarray
    valid: np.ndarray
    full: bool                  # every pixel valid
    lut: np.ndarray | None = None


@dataclass
class Style:
    """How a layer turns values into colours, resolved for one set of datasets."""

    ranges: list[Range] | None      # per output band; None: uint8 values as they are
    expression: Expression | None
    lut: np.ndarray | None          # (256, 4) uint8 for a colormap
    alpha_band: bool                # four bands: the fourth is an alpha
    key: str                        # names this style in the encode memo

    def apply(self, values: np.ndarray, valid: np.ndarray) -> Styled:
        """Style the values (h, w, bands) of one tile whose validity is ``valid``."""
        if self.expression is not None:
            arrays = {b: values[:, :, i].astype(np.float32)
                      for i, b in enumerate(self.expression.bands)}
            out = self.expression(arrays)
            valid = valid & np.isfinite(out)
            values = out[:, :, None]
        full = bool(valid.all())
        if self.ranges is not None:
            values = rescale(values, self.ranges)
        elif values.dtype != np.uint8:
            values = values.astype(np.uint8)
        if self.alpha_band and values.shape[2] == 4:
            valid = valid & (values[:, :, 3] > 0)
            full = bool(valid.all())
        if values.shape[2] == 1:
            pixels = values[:, :, 0]
            if self.lut is not None:
                return Styled("P", pixels, valid, full and bool((self.lut[:, 3] == 255).all()),
                              self.lut)
            return Styled("L", pixels, valid, full)
        return Styled("RGBA" if values.shape[2] == 4 else "RGB", values, valid, full)


def rescale(values: np.ndarray, ranges: Sequence[Range]) -> np.ndarray:
    """rio-tiler's ``linear_rescale`` then uint8, band by band (invalid pixels: any value)."""
    out = np.empty(values.shape, dtype=np.uint8)
    for b in range(values.shape[2]):
        lo, hi = ranges[b if b < len(ranges) else -1]
        band = values[:, :, b]
        im = np.clip(band, lo, hi, dtype=np.float64) - lo
        im = im / np.float64(hi - lo) if hi != lo else im * 0.0
        im = im * 255 + 0
        if band.dtype.kind == "f":
            im = im.astype(band.dtype)
        out[:, :, b] = im.astype(np.uint8)
    return out


def colormap_lut(name: str) -> np.ndarray:
    """rio-tiler's colormap ``name`` as a (256, 4) uint8 table."""
    from rio_tiler.colormap import cmap, make_lut
    try:
        cm = cmap.get(name)
    except Exception as e:
        raise RenderError(f"unknown colormap {name!r}: {e}") from None
    return np.ascontiguousarray(make_lut(cm), dtype=np.uint8)


def style_key(layer_name: str, fmt: str, tile_size: int, parts: Sequence[object]) -> str:
    """A memo key for a resolved style: the layer, format and everything that shapes pixels."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=12).hexdigest()
    return f"raster:{layer_name}:{fmt}:{tile_size}:{digest}"


__all__ = ["Mosaic", "Range", "Style", "Styled", "band_range", "colormap_lut",
           "expression_range", "parse_rescale", "rescale", "style_key"]
