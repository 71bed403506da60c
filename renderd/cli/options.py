"""Options shared by subcommands, and the way they load the configuration."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from .. import config as _config


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


def layer_option(required: bool = True) -> Callable[..., Any]:
    return click.option("--layer", "-l", "layer", required=required, metavar="LAYER",
                        help="layer name from the configuration")


def zoom_option(required: bool = True) -> Callable[..., Any]:
    return click.option("--zoom", "-z", "zoom", required=required, metavar="A-B",
                        help="zoom range, e.g. 0-7 or 12")


def area_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--area", metavar="FILE.geojson", default=None,
                     help="GeoJSON polygons or multipolygons")(f)
    f = click.option("--bbox", metavar="W,S,E,N", default=None, help="lon/lat box")(f)
    return f
