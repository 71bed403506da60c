"""``renderd-py render LAYER Z X Y -o FILE``: one tile, in-process, no daemon."""

from __future__ import annotations

import os
import sys
import tempfile

import click

from .. import tilesets
from ..errors import RenderdError, TileError
from ..tilemath import check_tile
from .options import config_option, scale_option


@click.command("render", context_settings={"ignore_unknown_options": True})
@click.argument("layer")
@click.argument("z", type=int)
@click.argument("x", type=int)
@click.argument("y", type=int)
@click.option("-o", "--output", "output", required=True, metavar="FILE",
              help="where to write the tile ('-' for standard output)")
@click.option("--key", "key_values", multiple=True, metavar="KEY=VALUE",
              help="a raster layer's key value (once per key of the layer)")
@scale_option
@config_option
def command(cfg, layer: str, z: int, x: int, y: int, output: str, key_values: tuple[str, ...],
            scale: int | None) -> None:
    """Render tile Z/X/Y of LAYER in this process and write it to FILE.

    The whole metatile holding the tile is rendered, with the layer's buffer,
    exactly as the daemon renders it; nothing is stored. For style
    development and debugging. A raster layer reads its datasets from the
    [catalog]; give each of its keys with --key KEY=VALUE.
    """
    # LAYER with --key KEY=VALUE per key (and --scale), or a tile set named LAYER/VALUE/...
    lyr = tilesets.layer_of(cfg, tilesets.from_options(cfg, layer, key_values, scale or 1)
                            if key_values or "/" not in layer else layer)
    try:
        check_tile(z, x, y, lyr.minzoom, lyr.maxzoom)
    except TileError as e:
        raise TileError(f"layer {layer}: {e}") from None
    keys = tilesets.key_values(lyr) or None
    from ..render import render_tile_png

    data = render_tile_png(lyr, z, x, y, catalog_url=cfg.catalog.url, keys=keys)
    if not data:
        raise RenderdError(f"tile {z}/{x}/{y} of layer {layer} rendered empty")
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    _write(output, data)


def _write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".render.", dir=folder)
    except OSError as e:
        raise RenderdError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RenderdError(f"cannot write {path}: {e.strerror}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
