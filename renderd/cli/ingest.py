"""``renderd-py ingest``: rasters matching a ``{key}`` pattern into the catalog."""

from __future__ import annotations

import json

import click

from .options import config_option


@click.command("ingest")
@config_option
@click.argument("pattern")
@click.option("--collection", required=True, metavar="NAME", help="the collection the datasets go into")
@click.option("--skip-existing", is_flag=True,
              help="skip files already in the collection with the same size and mtime")
@click.option("--no-stats", "no_stats", is_flag=True,
              help="read headers only: no statistics, a footprint from a decimated mask")
@click.option("--quiet", "-q", is_flag=True, help="print nothing unless something is wrong")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def command(cfg, pattern: str, collection: str, skip_existing: bool, no_stats: bool, quiet: bool,
            as_json: bool) -> None:
    """Read every raster matching PATTERN into the catalog.

    PATTERN names files with {key} placeholders: data/S2_{date}_{band}.tif
    gives keys date and band; {} matches a part that is no key. The first
    bad file stops the run with one line naming it."""
    from ..catalog import open_catalog
    from ..errors import CatalogMissing, IngestError
    from ..store import open_store
    from ..tilesets import valid_key_value
    from ..tools.ingest import Restale, check_files, ingest, ingested_files
    from ..tools.progress import Progress
    from ..tools.purge import front_purge, purge_urls

    if not valid_key_value(collection):
        raise click.BadParameter(f"{collection!r} is not [A-Za-z0-9_.-]{{1,64}} (nor . or ..)",
                                 param_hint="--collection")
    known = None
    if skip_existing:   # their headers need no check: from the catalog if there is one
        try:
            with open_catalog(cfg.catalog.url, create=False) as catalog:
                known = ingested_files(catalog, collection)
        except CatalogMissing:
            pass
    files = check_files(pattern, known)   # every header, before anything is written
    restale = Restale(cfg.layers, collection, lambda: open_store(cfg.store),
                      (lambda ts: front_purge(cfg, ts, "dirty", announce=True)) if purge_urls(cfg) else None)
    progress = Progress(len(files), label="files", enabled=not (quiet or as_json))
    try:
        with open_catalog(cfg.catalog.url) as catalog:
            summary = ingest(catalog, pattern, collection, skip_existing=skip_existing,
                             stats=not no_stats, restale=restale, progress=progress, files=files)
    finally:
        progress.finish()
        restale.close()
    told, tiles, warnings = restale.nginx()
    if as_json:
        click.echo(json.dumps({**summary.as_dict(), "nginx": {"metatiles": told, "tiles": tiles}}))
    elif not quiet:
        for line in summary.lines_out():
            click.echo(line)
        if told:
            click.echo(f"  nginx:     {tiles} hot tiles of {told} metatiles marked stale")
    for w in warnings:
        click.echo(f"renderd-py: {w}", err=True)
    if summary.error:
        raise IngestError(summary.error)
