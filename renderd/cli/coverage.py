"""``renderd-py coverage``: how much of an area the cache holds (RFC 122 JSON)."""

from __future__ import annotations

import json

import click

from .. import tilesets
from .options import area_options, config_option, layer_option, zoom_option


@click.command("coverage")
@config_option
@layer_option()
@zoom_option()
@area_options
@click.option("--short", is_flag=True, help="leave out metatiles with nothing cached")
@click.option("--compact", is_flag=True, help="one line of JSON instead of an indented document")
def command(cfg, layer: str, zoom: str, bbox: str | None, area: str | None, short: bool,
            compact: bool) -> None:
    """Print a JSON coverage report (MapCache's mapcache_detail, RFC 122)."""
    from ..store import open_store
    from ..tilemath import parse_zoom_range
    from ..tools.area import Area
    from ..tools.coverage import coverage

    lyr = tilesets.layer_of(cfg, layer)
    zooms = parse_zoom_range(zoom, lyr.minzoom, lyr.maxzoom)
    region = Area.from_options(bbox, area)
    with open_store(cfg.store) as store:
        report = coverage(store, lyr.name, region, zooms, meta=lyr.metatile, short=short)
    click.echo(json.dumps(report, separators=(",", ":")) if compact else json.dumps(report, indent=2))
