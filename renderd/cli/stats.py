"""``renderd-py stats``: duplicate statistics of a layer's stored tiles."""

from __future__ import annotations

import json

import click

from .. import tilesets
from .options import config_option, layer_option, zoom_option


@click.command("stats")
@config_option
@layer_option()
@zoom_option(required=False)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def command(cfg, layer: str, zoom: str | None, as_json: bool) -> None:
    """Tiles, unique tiles, duplicate share and bytes per zoom.

    Without --zoom, zooms with nothing stored are left out."""
    from ..store import open_store
    from ..tilemath import parse_zoom_range
    from ..tools.stats import report, stats, table

    lyr = tilesets.layer_of(cfg, layer)
    lo, hi = (lyr.minzoom, lyr.maxzoom) if zoom is None else parse_zoom_range(zoom, lyr.minzoom, lyr.maxzoom)
    with open_store(cfg.store) as store:
        rows, total = stats(store, lyr.name, range(lo, hi + 1))
    if zoom is None:  # all of the layer's zooms: leave out those with nothing stored
        rows = [r for r in rows if r.metatiles]
    if as_json:
        click.echo(json.dumps(report(lyr.name, rows, total), indent=2))
    else:
        for line in table(lyr.name, rows, total):
            click.echo(line)
