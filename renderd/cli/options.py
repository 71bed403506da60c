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


def scale_option(f: Callable[..., Any], every: bool = False) -> Callable[..., Any]:
    """``--scale N``: the layer's HiDPI tile set of that scale (``[[layer]] scales``);
    not given, 1 (``every``: every scale of the layer)."""
    return click.option("--scale", "scale", type=click.IntRange(1, max(tilesets.SCALES)), default=None,
                        metavar="N", help="the tiles of this scale (HiDPI @Nx, one of the layer's scales; "
                                          + ("default: every scale the layer has)" if every else "default 1)"))(f)


def layer_option(required: bool = True, every_scale: bool = False) -> Callable[..., Any]:
    """``--layer L``, for a layer with keys ``--key KEY=VALUE`` once per
    key, and ``--scale N``: the command gets the tile set's name as ``layer``
    (``L/VALUE/...``, ``L@2x``, renderd.tilesets). With ``every_scale`` it
    gets ``layers``, a list: the tile sets of every scale of the layer
    unless ``--scale`` names one. Goes below ``config_option``."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(cfg: _config.Config, layer: str | None, key_options: tuple[str, ...],
                    scale: int | None, **kw: Any) -> Any:
            if layer is not None:
                name = tilesets.from_options(cfg, layer, key_options, scale or 1)
                if every_scale:
                    scales = cfg.layer(layer).scales if scale is None else (scale,)
                    ts = tilesets.from_options(cfg, layer, key_options)
                    return f(cfg=cfg, layers=[tilesets.with_scale(ts, n) for n in scales], **kw)
                layer = name
            elif key_options or scale is not None:
                raise click.UsageError("--key and --scale go with --layer")
            if every_scale:
                return f(cfg=cfg, layers=[], **kw)
            return f(cfg=cfg, layer=layer, **kw)

        wrapper = scale_option(wrapper, every_scale)
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
