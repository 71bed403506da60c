"""``renderd-py export``: an area and zoom range to MBTiles or PMTiles."""

from __future__ import annotations

import json

import click

from .. import tilesets
from .options import area_options, config_option, layer_option, zoom_option


@click.command("export")
@config_option
@layer_option()
@zoom_option()
@area_options
@click.option("-o", "--output", "output", required=True, metavar="OUT.mbtiles|OUT.pmtiles",
              help="file to write (replaced when complete)")
@click.option("--render-missing", is_flag=True, help="ask the daemon for metatiles not stored yet")
@click.option("--concurrency", "-n", type=click.IntRange(1, 10000), default=None,
              help="renders in flight with --render-missing (default: twice [daemon] workers)")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=600.0, show_default=True,
              help="seconds to wait for one metatile with --render-missing")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def command(cfg, layer: str, zoom: str, bbox: str | None, area: str | None, output: str,
            render_missing: bool, concurrency: int | None, timeout: float, quiet: bool,
            as_json: bool) -> None:
    """Write the area's tiles to an MBTiles or PMTiles file."""
    from ..store import open_store
    from ..tilemath import parse_zoom_range
    from ..tools.area import Area
    from ..tools.export import export, format_of
    from ..tools.progress import Progress
    from .seed import Interrupts

    lyr = tilesets.layer_of(cfg, layer)
    zooms = parse_zoom_range(zoom, lyr.minzoom, lyr.maxzoom)
    region = Area.from_options(bbox, area)
    format_of(output)
    progress = Progress(0, "metatiles", enabled=not quiet)
    with open_store(cfg.store) as store, Interrupts() as stop:
        summary = export(store, lyr, region, zooms, output, render_missing=render_missing,
                         endpoint=cfg.daemon.broker,
                         concurrency=concurrency or max(4, 2 * cfg.daemon.workers),
                         timeout=timeout, progress=progress, stop=stop)
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        for line in summary.lines():
            click.echo(line)
    if summary.render_failed:
        from ..errors import RenderdError
        raise RenderdError(f"{summary.render_failed} metatiles could not be rendered; "
                           f"{summary.missing} tiles are missing from {output}")
