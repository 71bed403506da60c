"""``renderd-py expire``: apply an osm2pgsql expiry list (``z/x/y`` lines)."""

from __future__ import annotations

import json

import click

from .. import tilesets
from .options import config_option, layer_option


@click.command("expire")
@config_option
@layer_option(every_scale=True)
@click.argument("path", metavar="[FILE | -]", required=False, default="-")
@click.option("--min-zoom", "min_zoom", type=int, default=None,
              help="lowest zoom to expire (default: the layer's minzoom)")
@click.option("--mode", type=click.Choice(["dirty", "delete", "render"]), default="dirty",
              show_default=True, help="mark stale, delete, or mark stale and re-render at expiry priority")
@click.option("--concurrency", "-n", type=click.IntRange(1, 10000), default=None,
              help="renders in flight with --mode render (default: twice [daemon] workers)")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=3600.0, show_default=True,
              help="seconds to wait for one render with --mode render")
@click.option("--quiet", "-q", is_flag=True, help="print nothing unless something is wrong")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def command(cfg, layers: list[str], path: str, min_zoom: int | None, mode: str, concurrency: int | None,
            timeout: float, quiet: bool, as_json: bool) -> None:
    """Mark stale, delete or re-render the metatiles of changed tiles.

    A layer with HiDPI scales: the tile sets of every scale, unless --scale
    names one (one summary each, a JSON object per line with --json)."""
    from ..tools.expire import open_input

    lyr = tilesets.layer_of(cfg, layers[0])
    lo = lyr.minzoom if min_zoom is None else min_zoom
    if not lyr.minzoom <= lo <= lyr.maxzoom:
        raise click.BadParameter(f"{lo} is outside the layer's zooms {lyr.minzoom}-{lyr.maxzoom}",
                                 param_hint="--min-zoom")
    stream = open_input(path)
    try:
        # (the list is read once; each further scale goes over the same lines)
        lines = stream if len(layers) == 1 else list(stream)
        for name in layers:
            _expire_one(cfg, tilesets.layer_of(cfg, name), lines, lo, mode, concurrency, timeout, quiet,
                        as_json)
    finally:
        if path not in (None, "-"):
            stream.close()


def _expire_one(cfg, lyr, lines, lo: int, mode: str, concurrency: int | None, timeout: float,
                quiet: bool, as_json: bool) -> None:
    from ..store import open_store
    from ..tools.expire import expire
    from ..tools.purge import front_purge
    from .seed import Interrupts

    # nginx's hot copies: stale with the store's (dirty, render), or gone (delete)
    front = front_purge(cfg, lyr.name, "delete" if mode == "delete" else "dirty")
    try:
        with open_store(cfg.store) as store, Interrupts() as stop:
            summary = expire(store, lyr.name, iter(lines), (lo, lyr.maxzoom), mode, meta=lyr.metatile,
                             endpoint=cfg.daemon.broker,
                             concurrency=concurrency or max(4, 2 * cfg.daemon.workers),
                             timeout=timeout, stop=stop, changed=front.add)
    finally:
        front.close()
    if as_json:
        click.echo(json.dumps({**summary.as_dict(), "hot_cache": front.report()}))
    elif not quiet:
        for line in summary.lines_out():
            click.echo(line)
        if front.nodes and front.error is None:
            click.echo(front.line())
    if front.warning():
        click.echo(f"renderd-py: {front.warning()}", err=True)
    if summary.malformed and quiet:
        click.echo(f"renderd-py: expire: {summary.malformed} malformed lines ignored", err=True)
    if summary.failed:
        from ..errors import RenderdError
        raise RenderdError(f"{summary.failed} re-renders failed")
