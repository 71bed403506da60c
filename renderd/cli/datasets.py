"""``renderd-py datasets``: the datasets of a collection in the catalog."""

from __future__ import annotations

import json

import click

from .options import config_option


@click.command("datasets")
@config_option
@click.option("--collection", metavar="NAME", default=None,
              help="the collection to list (without: the collections and their sizes)")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="only datasets with this key value (repeatable)")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most this many datasets")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="skip this many datasets first")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def command(cfg, collection: str | None, where: tuple[str, ...], limit: int | None, offset: int,
            as_json: bool) -> None:
    """List datasets with their keys, bounds and statistics, by path."""
    from ..catalog import open_catalog
    from ..catalog.codec import to_json
    from ..errors import CatalogError
    from ..tools.datasets import parse_where, table

    filters = parse_where(where)
    with open_catalog(cfg.catalog.url, create=False) as catalog:
        if collection is None:
            names = catalog.collections()
            counts = {n: catalog.count(n) for n in names}
            if as_json:
                click.echo(json.dumps(counts, indent=2))
            else:
                for n in names:
                    click.echo(f"{n}  {counts[n]} datasets")
            return
        if collection not in catalog.collections():
            known = ", ".join(catalog.collections()) or "none"
            raise CatalogError(f"the catalog has no collection {collection!r} (collections: {known})")
        found = catalog.list(collection, filters, limit, offset)
    if as_json:
        click.echo(json.dumps([to_json(d) for d in found], indent=2))
    else:
        for line in table(found):
            click.echo(line)
