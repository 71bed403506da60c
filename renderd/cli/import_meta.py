"""``renderd-py import-meta --layer L DIR``: import a mod_tile tile directory."""

from __future__ import annotations

import json
import sys

import click

from .. import tilesets
from ..errors import RenderdError
from ..store import open_store
from ..tilemath import parse_zoom_range
from ..tools.importmeta import ImportStats, import_dir, summary
from .options import config_option, layer_option


@click.command("import-meta")
@config_option
@layer_option()
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--style", metavar="NAME", default=None,
              help="style directory below DIR (needed when DIR holds several)")
@click.option("--zoom", "-z", "zoom", metavar="A-B", default=None,
              help="only these zooms (default: the layer's)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress line and no per-file errors")
def command(cfg, layer: str, directory: str, style: str | None, zoom: str | None,
            as_json: bool, quiet: bool) -> None:
    """Import the .meta files of a mod_tile tile directory into the store.

    DIR is a mod_tile style directory (DIR/Z/H4/H3/H2/H1/H0.meta) or a tile
    directory holding style directories. Identical tiles are stored once.
    Files that cannot be read are reported and skipped; the exit status is
    1 if any failed.
    """
    lyr = tilesets.layer_of(cfg, layer)
    zooms = parse_zoom_range(zoom) if zoom else None
    progress = not quiet and sys.stderr.isatty()

    def on_error(path: str, message: str) -> None:
        if not quiet:
            _clear(progress)
            click.echo(f"renderd-py: import-meta: {path}: {message}", err=True)

    def on_progress(st: ImportStats) -> None:
        if progress:
            click.echo(f"\r{st.files} files, {st.metatiles} metatiles, {st.tiles} tiles, "
                       f"{st.failed} failed", err=True, nl=False)

    with open_store(cfg.store) as store:
        stats = import_dir(store, lyr, directory, style=style, zooms=zooms,
                           on_error=on_error, on_progress=on_progress)
    _clear(progress)
    if as_json:
        click.echo(json.dumps(stats.as_dict(), indent=2))
    else:
        click.echo(summary(stats))
    if stats.failed:
        raise RenderdError(f"{stats.failed} of {stats.files} files could not be imported")
    if not stats.files:
        raise RenderdError(f"no .meta files found below {directory}")


def _clear(progress: bool) -> None:
    if progress:
        click.echo("\r\033[K", err=True, nl=False)
