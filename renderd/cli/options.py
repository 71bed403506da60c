"""Options shared by subcommands, and the way they load the configuration."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from .. import config as _config
from .. import tilesets


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config PATH`` on a subcommand; passes ``cfg`` (a loaded Config)."""

    @click.option("-c", "--config", "config_path", metavar="CONFIG", default=None,
                  help="configuration file (default: $RENDERD_PY_CONFIG, then "
                       f"{_config.DEFAULT_PATH})")
    @click.pass_context
    @functools.wraps(f)
    def wrapper(ctx: click.Context, config_path: str | None, **kw: Any) -> Any:
        path = config_path or (ctx.obj or {}).get("config_path")
        return ctx.invoke(f, cfg=_config.load(path), **kw)

    return wrapper


def scale_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--scale N``: the layer's HiDPI tile set of that scale (``[[layer]] scales``)."""
    return click.option("--scale", "scale", type=click.IntRange(1, max(tilesets.SCALES)), default=1,
                        show_default=True, metavar="N",
                        help="the tiles of this scale (HiDPI @Nx, one of the layer's scales)")(f)


def layer_option(required: bool = True) -> Callable[..., Any]:
    """``--layer L``, for a layer with keys ``--key KEY=VALUE`` once per
    key, and ``--scale N``: the command gets the tile set's name as ``layer``
    (``L/VALUE/...``, ``L@2x``, renderd.tilesets). Goes below ``config_option``."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(cfg: _config.Config, layer: str | None, key_options: tuple[str, ...],
                    scale: int, **kw: Any) -> Any:
            if layer is not None:
                layer = tilesets.from_options(cfg, layer, key_options, scale)
            elif key_options or scale != 1:
                raise click.UsageError("--key and --scale go with --layer")
            return f(cfg=cfg, layer=layer, **kw)

        wrapper = scale_option(wrapper)
        wrapper = click.option("--key", "-k", "key_options", multiple=True, metavar="KEY=VALUE",
                               help="a value of one of the layer's keys (raster layers with keys)")(wrapper)
        return click.option("--layer", "-l", "layer", required=required, metavar="LAYER",
                            help="layer name from the configuration")(wrapper)

    return decorate


def zoom_option(required: bool = True) -> Callable[..., Any]:
    return click.option("--zoom", "-z", "zoom", required=required, metavar="A-B",
                        help="zoom range, e.g. 0-7 or 12")


def area_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--area", metavar="FILE.geojson", default=None,
                     help="GeoJSON polygons or multipolygons")(f)
    f = click.option("--bbox", metavar="W,S,E,N", default=None, help="lon/lat box")(f)
    return f
