"""Pillow encoders for raster tiles: PNG, JPEG and WebP.

- PNG: a tile whose every pixel is valid is written without alpha (RGB or
  grey), else with it (RGBA or grey+alpha). A colormapped tile is written
  as a palette PNG of the colours it uses (a ``tRNS`` chunk makes the
  invalid pixels transparent): one byte a pixel instead of four, with the
  same decoded pixels. zlib at level 6; for RGB, RGBA and grey tiles with
  the run-length strategy (``Z_RLE``): on shaded relief about 2x faster
  than the default strategy for about 14% more bytes, within a few per cent
  of the RGBA PNGs GDAL writes for rio-tiler (``docs/benchmarks.md``); for
  palette tiles with the default strategy, which there costs little more
  and writes 2-4x fewer bytes.
- JPEG: RGB (or grey) with invalid pixels black; ``jpegNN`` is quality NN,
  ``jpeg`` 85 (rio-tiler's and Mapnik's default).
- WebP: lossy, with alpha where a pixel is invalid; ``webpNN`` is quality
  NN, ``webp`` 75 (rio-tiler's default).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from ..errors import RenderError
from .raster_style import Styled

PNG_LEVEL = 6
PNG_STRATEGY = 3            # zlib's Z_RLE, for RGB, RGBA and grey tiles
PALETTE_STRATEGY = 0        # zlib's default, for palette tiles
DEFAULT_QUALITY = {"jpeg": 85, "webp": 75}


@dataclass(frozen=True)
class TileFormat:
    kind: str               # png, jpeg or webp
    quality: int = 0

    @classmethod
    def parse(cls, fmt: str) -> "TileFormat":
        m = re.fullmatch(r"(png|jpeg|webp)(\d*)", fmt)
        if not m or (m.group(1) == "png" and m.group(2)):
            raise RenderError(f"{fmt!r} is not a raster tile format (png, jpegNN, webpNN)")
        kind = m.group(1)
        quality = int(m.group(2)) if m.group(2) else DEFAULT_QUALITY.get(kind, 0)
        if kind != "png" and not 1 <= quality <= 100:
            raise RenderError(f"{fmt!r}: quality must be 1 to 100")
        return cls(kind, quality)


def encode(tile: Styled, fmt: TileFormat) -> bytes:
    """The tile's bytes in ``fmt``."""
    from PIL import Image

    if fmt.kind == "png":
        im, extra = _png_image(tile)
        extra.setdefault("compress_type", PNG_STRATEGY)
        return _save(im, "PNG", compress_level=PNG_LEVEL, **extra)
    if fmt.kind == "jpeg":
        pixels = _opaque(tile)
        return _save(Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB"), "JPEG",
                     quality=fmt.quality)
    pixels = _rgb(tile)
    if not tile.full:
        pixels = np.dstack([pixels, np.where(tile.valid, pixels_alpha(tile), 0).astype(np.uint8)])
    return _save(Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB"), "WEBP",
                 quality=fmt.quality)


def encode_image(im: object, fmt: TileFormat) -> bytes:
    """A Pillow image (RGB, or RGBA with some transparent pixel) in ``fmt``,
    with the settings ``encode`` writes tiles with."""
    if fmt.kind == "png":
        return _save(im, "PNG", compress_level=PNG_LEVEL, compress_type=PNG_STRATEGY)
    if fmt.kind == "jpeg":
        if im.mode != "RGB":  # type: ignore[attr-defined]
            from PIL import Image
            black = Image.new("RGB", im.size)  # type: ignore[attr-defined]
            black.paste(im, mask=im.getchannel("A"))  # type: ignore[attr-defined]
            im = black
        return _save(im, "JPEG", quality=fmt.quality)
    return _save(im, "WEBP", quality=fmt.quality)


def empty(size: int, fmt: TileFormat) -> bytes:
    """A tile with no data: transparent (black for JPEG)."""
    z = np.zeros((size, size), dtype=np.uint8)
    lut = np.zeros((256, 4), dtype=np.uint8)
    return encode(Styled("P", z, z.astype(bool), False, lut), fmt)


def _save(im: object, kind: str, **options: object) -> bytes:
    bio = io.BytesIO()
    try:
        im.save(bio, kind, **options)  # type: ignore[attr-defined]
    except (OSError, ValueError) as e:
        raise RenderError(f"cannot encode a tile as {kind}: {e}") from None
    return bio.getvalue()


def pixels_alpha(tile: Styled) -> np.ndarray:
    """The alpha a tile's valid pixels carry: its fourth band, its colormap's, or opaque."""
    if tile.mode == "RGBA":
        return tile.pixels[:, :, 3]
    if tile.mode == "P" and tile.lut is not None:
        return tile.lut[tile.pixels, 3]
    return np.full(tile.valid.shape, 255, dtype=np.uint8)


def _rgb(tile: Styled) -> np.ndarray:
    """(h, w, 3) colours, whatever is under invalid pixels."""
    if tile.mode == "P":
        assert tile.lut is not None
        return tile.lut[tile.pixels, :3]
    if tile.mode == "L":
        return np.repeat(tile.pixels[:, :, None], 3, axis=2)
    return tile.pixels[:, :, :3]


def _opaque(tile: Styled) -> np.ndarray:
    """Grey or RGB pixels with the invalid ones black (JPEG)."""
    pixels = tile.pixels if tile.mode == "L" else _rgb(tile)
    if tile.full:
        return np.ascontiguousarray(pixels)
    mask = tile.valid if pixels.ndim == 2 else tile.valid[:, :, None]
    return np.where(mask, pixels, 0).astype(np.uint8)


def _png_image(tile: Styled) -> tuple[object, dict]:
    from PIL import Image

    if tile.mode == "P":
        palette = _palette(tile)
        if palette is not None:
            return palette
        rgba = np.dstack([_rgb(tile), np.where(tile.valid, pixels_alpha(tile), 0).astype(np.uint8)])
        return Image.fromarray(rgba, "RGBA"), {}
    if tile.full and tile.mode != "RGBA":
        return Image.fromarray(np.ascontiguousarray(tile.pixels), tile.mode), {}
    alpha = np.where(tile.valid, pixels_alpha(tile), 0).astype(np.uint8)
    if tile.mode == "L":
        return Image.fromarray(np.dstack([tile.pixels, alpha]), "LA"), {}
    return Image.fromarray(np.dstack([tile.pixels[:, :, :3], alpha]), "RGBA"), {}


def _palette(tile: Styled) -> tuple[object, dict] | None:
    """A palette image of the colours the tile uses (and transparent), or None if > 256."""
    from PIL import Image

    assert tile.lut is not None
    idx = tile.pixels
    if tile.full:
        counts = np.bincount(idx.ravel(), minlength=256)
    else:
        idx = idx.astype(np.uint16)
        idx[~tile.valid] = 256
        counts = np.bincount(idx.ravel(), minlength=257)
    used = np.flatnonzero(counts[:256])
    colours = tile.lut[used]
    if counts.size > 256 and counts[256]:
        colours = np.vstack([colours, np.zeros((1, 4), dtype=np.uint8)])
    if len(colours) > 256:
        return None
    remap = np.zeros(257, dtype=np.uint8)
    remap[used] = np.arange(len(used), dtype=np.uint8)
    remap[256] = len(used) % 256
    im = Image.fromarray(remap[idx], "P")
    im.putpalette(colours[:, :3].tobytes(), "RGB")
    extra: dict = {"compress_type": PALETTE_STRATEGY}
    if (colours[:, 3] != 255).any():
        extra["transparency"] = colours[:, 3].tobytes()
    return im, extra


__all__ = ["DEFAULT_QUALITY", "PNG_LEVEL", "PNG_STRATEGY", "TileFormat", "empty", "encode",
           "encode_image", "pixels_alpha"]
